//! `odl bench …`: throughput and memory figures, one module per service. Benchmarks
//! print their figures (as ratios against a baseline measured in the same run where
//! there is one); they never assert on time: the machines are shared and noisy.

use clap::Subcommand;

pub mod join;
pub mod kafka;
pub mod publish;
pub mod serve;
pub mod train;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Replay a simulated stream through the joiner: events/s and peak RSS.
    Join(join::BenchJoinArgs),
    /// Simulated events through the broker into the Kafka joiner, against the broker's
    /// own produce->consume rate.
    Kafka(kafka::BenchKafkaArgs),
    /// Train the default model on simulated samples: samples/s (file and cluster), RSS.
    Train(train::BenchTrainArgs),
    /// Publish a large sparse version to serving nodes: time to FINISHED.
    Publish(publish::BenchPublishArgs),
    /// Concurrent prediction load on a serving node: instances/s and latency.
    Serve(serve::BenchServeArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Join(a) => join::run(a),
        BenchCommand::Kafka(a) => kafka::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Publish(a) => publish::run(a),
        BenchCommand::Serve(a) => serve::run(a),
    }
}
