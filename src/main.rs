//! The `redrec` binary: one executable, the role chosen by subcommand. Each role starts
//! inside its own crate; this file only parses and dispatches.

mod bench;
mod bench_cluster;
mod bench_fanout;
mod bench_ids;
mod bench_ingest;
mod bench_load;
mod cli;
mod cluster;
mod cluster_top;
mod demo;
mod eval;
mod telemetry;

use anyhow::Result;
use clap::Parser;
use cli::{BenchCommand, Cli, Command, DatasetCommand};
use redrec::dataset;
use redrec_wire::auth::Guard;

/// mimalloc returns freed memory to the system: index builds allocate and free large
/// buffers, which the system allocator's arenas otherwise keep.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let role = match &cli.command {
        Command::Router(_) => "router",
        Command::Encoder(_) => "encoder",
        Command::Shard(_) => "shard",
        _ => "tool",
    };
    let _telemetry = telemetry::init(role)?;
    let (token, ca) = (cli.cluster_token(), cli.tls_ca.clone());
    match cli.command {
        Command::Demo(a) => demo::run(a).await,
        Command::Shard(a) => redrec_shard::serve(a.config(token, ca)?).await,
        Command::Encoder(a) => {
            let guard = Guard::new(None, token.as_ref());
            redrec_encoder::serve(a.listen, a.towers.config(), a.serve.options()?, guard).await
        }
        Command::Router(a) => {
            let (options, cfg) = (a.serve.options()?, a.config(token, ca)?);
            redrec_router::serve(a.listen, a.towers(), a.topology()?, cfg, options).await
        }
        Command::Bench(BenchCommand::Encoder(a)) => bench::encoder(a).await,
        Command::Bench(BenchCommand::Ingest(a)) => bench_ingest::ingest(a).await,
        Command::Bench(BenchCommand::Cluster(a)) => bench_cluster::cluster(a).await,
        Command::Bench(BenchCommand::Fanout(a)) => bench_fanout::fanout(a).await,
        Command::Bench(BenchCommand::Ids(a)) => bench_ids::ids(a).await,
        Command::Cluster(c) => {
            cluster::run(c, redrec_wire::http_client(token.as_ref(), ca.as_deref())?).await
        }
        Command::Eval(a) => eval::run(a).await,
        Command::Dataset(DatasetCommand::Movielens(a)) => {
            let source = match a.source {
                Some(s) => s,
                None => dataset::movielens::recbole_ml100k()?,
            };
            let split = match a.protocol {
                cli::Protocol::LastWindow => dataset::movielens::Split::LastWindow(a.window),
                cli::Protocol::Recbole => dataset::movielens::Split::LeaveOneOut,
            };
            let (items, users) = dataset::movielens::convert(&source, &a.out, split)?;
            println!(
                "wrote {items} items and {users} users (MovieLens-100k from {}) to {}",
                source.display(),
                a.out.display()
            );
            Ok(())
        }
        Command::Dataset(DatasetCommand::Synth(a)) => {
            let cfg = dataset::synthetic::SynthConfig {
                items: a.items,
                users: a.users,
                seed: a.seed,
                ..Default::default()
            };
            let out = a.out.clone();
            tokio::task::spawn_blocking(move || dataset::synthetic::write(&cfg, &out)).await??;
            println!(
                "wrote {} items and {} users to {}",
                a.items,
                a.users,
                a.out.display()
            );
            Ok(())
        }
    }
}
