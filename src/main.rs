fn main() {
    println!("glidefs {}", env!("CARGO_PKG_VERSION"));
}
