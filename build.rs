//! Embeds build information (git sha, build date, target) for `glidefs --version`
//! and the `glidefs_build_info` metric. Outside a git checkout (e.g. a Nix build
//! from a source tarball) vergen emits placeholders instead of failing.
use vergen_gitcl::{BuildBuilder, CargoBuilder, Emitter, GitclBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let build = BuildBuilder::default().build_date(true).build()?;
    let cargo = CargoBuilder::default().target_triple(true).build()?;
    let git = GitclBuilder::default().sha(true).dirty(true).build()?;
    Emitter::default()
        .add_instructions(&build)?
        .add_instructions(&cargo)?
        .add_instructions(&git)?
        .emit()?;
    Ok(())
}
