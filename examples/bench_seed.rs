//! Benchmark fixture: fills a fresh state directory with the snapshot an
//! initial load would leave, without writing the objects to the target.
//!
//!   cargo run --release --example bench_seed -- --config FILE
//!
//! The entries go through absync's own pull, scope, map and diff, so the
//! rows (names, tie-breakers, attributes, agreements) are exactly those a
//! real initial load records. `bench/run --matrix` uses it to measure
//! no-change runs over a million source entries: a no-change run never
//! reads the managed objects from the target, and loading a million
//! contacts through Samba (about 260 adds/s) would take over an hour.

use std::time::Instant;

use absync::config::Config;
use absync::engine::diff::{Kind, Planner, Unowned};
use absync::engine::scope::Scope;
use absync::ldap::Conn;
use absync::state::runs::Counts;
use absync::state::Snapshot;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let config = match args.as_slice() {
        [_, flag, path] if flag == "--config" => path.clone(),
        _ => return Err("usage: bench_seed --config FILE".into()),
    };
    let started = Instant::now();
    let cfg = Config::load(std::path::Path::new(&config))?;
    let inputs = absync::engine::load_inputs(&cfg)?;
    let snapshot = Snapshot::open(&cfg.state_dir)?;
    if snapshot.count()? > 0 {
        return Err(format!("{} already holds a snapshot", cfg.state_dir.display()).into());
    }
    let scope = Scope::new(&cfg.source, &inputs.agreements);
    let mut planner = Planner::new(
        &snapshot,
        &inputs.mapping,
        &cfg.target.base_dn,
        Some(Unowned::default()),
    );
    let filter = absync::engine::pull::query::filter(&cfg.source, &inputs.agreements)
        .ok_or("no agreement is in force")?;
    let attrs = absync::engine::pull::query::attributes(&cfg.source, &inputs.agreements);
    let mut source = Conn::connect(&cfg.source.endpoint).await?;
    let mut search =
        absync::engine::pull::query::start(&mut source, &cfg.source, &filter, attrs).await?;
    let mut counts = Counts::default();
    let (mut entries, mut seeded) = (0u64, 0u64);
    while let Some(entry) = search.next().await? {
        entries += 1;
        if let Some(change) = planner.plan(scope.judge(entry), &mut counts)? {
            if let Kind::Add { after } = change.kind {
                snapshot.commit(&change.anchor, Some(&after), 0, &[])?;
                seeded += 1;
            }
        }
    }
    search.finish().await?;
    println!(
        "seeded {seeded} objects from {} entries in {:.1} s",
        entries,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
