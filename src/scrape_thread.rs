//! The one thread that renders `/metrics`.
//!
//! Why a thread of its own: the API serves each request on a new short-lived thread,
//! and glibc's malloc gives threads separate arenas (up to 8 per core) and keeps the
//! memory freed in each. A scrape with per-export series allocates in proportion to
//! the exports (about 25 MB at 1,025 exports), so scrapes rendered on request threads
//! left one scrape's peak behind in every arena they touched: measured natively at
//! 1,025 exports, RssAnon grew from 25 MB to 280 MB over 30 scrapes and stayed there,
//! against 44 MB with a single arena. Rendering always on this thread keeps that to
//! one arena's worth.
//!
//! Invariants:
//! - the thread starts on the first render and ends when its [`ScrapeThread`] is
//!   dropped (the channel closes);
//! - a render never fails for want of the thread: if it cannot be started or has
//!   died, the caller renders on its own thread.

use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::mpsc;
use std::sync::OnceLock;

/// A render request: where to send the text.
type Request = mpsc::SyncSender<String>;

/// Renders one registry on a dedicated thread.
pub struct ScrapeThread {
    registry: Registry,
    /// `None` inside when the thread could not be spawned.
    tx: OnceLock<Option<mpsc::Sender<Request>>>,
}

impl ScrapeThread {
    /// For `registry`; no thread yet.
    pub fn new(registry: Registry) -> ScrapeThread {
        ScrapeThread {
            registry,
            tx: OnceLock::new(),
        }
    }

    /// Every family of the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let tx = self.tx.get_or_init(|| spawn(self.registry.clone()));
        if let Some(tx) = tx {
            let (reply, answer) = mpsc::sync_channel(1);
            if tx.send(reply).is_ok() {
                if let Ok(text) = answer.recv() {
                    return text;
                }
            }
            tracing::warn!("the metrics render thread is gone; rendering on the request's thread");
        }
        render_text(&self.registry)
    }
}

fn spawn(registry: Registry) -> Option<mpsc::Sender<Request>> {
    let (tx, rx) = mpsc::channel::<Request>();
    let spawned = std::thread::Builder::new()
        .name("metrics-render".into())
        .spawn(move || {
            for reply in rx {
                // The asker may have given up; nothing to do then.
                let _ = reply.send(render_text(&registry));
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the metrics render thread; scrapes render on request threads");
            None
        }
    }
}

fn render_text(registry: &Registry) -> String {
    let families = registry.gather();
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use prometheus::core::{Collector, Desc};
    use prometheus::proto::MetricFamily;
    use prometheus::IntCounter;
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::thread::ThreadId;

    /// A collector that notes the thread of every collect.
    struct ThreadProbe {
        desc: Desc,
        threads: Mutex<HashSet<ThreadId>>,
    }

    impl Collector for ThreadProbe {
        fn desc(&self) -> Vec<&Desc> {
            vec![&self.desc]
        }
        fn collect(&self) -> Vec<MetricFamily> {
            self.threads.lock().insert(std::thread::current().id());
            Vec::new()
        }
    }

    #[test]
    fn every_render_runs_on_one_thread_whoever_asks() {
        let registry = Registry::new();
        let c = IntCounter::new("scrape_thread_test_total", "a test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(7);
        let probe = Arc::new(ThreadProbe {
            desc: Desc::new("probe".into(), "probe".into(), vec![], HashMap::new()).unwrap(),
            threads: Mutex::new(HashSet::new()),
        });
        registry
            .register(Box::new(ProbeRef(probe.clone())))
            .unwrap();
        let st = ScrapeThread::new(registry);
        let callers: Vec<ThreadId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let text = st.render();
                        assert!(text.contains("scrape_thread_test_total 7"), "{text}");
                        std::thread::current().id()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let threads = probe.threads.lock().clone();
        assert_eq!(
            threads.len(),
            1,
            "8 renders ran on {} threads",
            threads.len()
        );
        assert!(callers.iter().all(|t| !threads.contains(t)));
    }

    /// Registers a shared probe (the registry takes a boxed collector).
    struct ProbeRef(Arc<ThreadProbe>);

    impl Collector for ProbeRef {
        fn desc(&self) -> Vec<&Desc> {
            self.0.desc()
        }
        fn collect(&self) -> Vec<MetricFamily> {
            self.0.collect()
        }
    }

    #[test]
    fn renders_without_the_thread() {
        let registry = Registry::new();
        let c = IntCounter::new("scrape_thread_fallback_total", "a test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        let st = ScrapeThread::new(registry);
        // As if the thread could not be spawned.
        st.tx.set(None).unwrap();
        assert!(st.render().contains("scrape_thread_fallback_total 0"));
    }
}
