use clap::Parser;

/// absync: address-book synchronisation from the NHS Directory into Active Directory.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
