//! sockrelay-origin: offer a local unix socket (e.g. an ssh-agent) through a relay.
//! See `sockrelay-origin --help` and docs/CLIENTS.md.

fn main() {
    std::process::exit(sockrelay::client::args::main(
        sockrelay::client::Side::Origin,
        "sockrelay-origin",
    ));
}
