//! sockrelay-dest: a local unix socket whose connections reach the origin's socket.
//! See `sockrelay-dest --help` and docs/CLIENTS.md.

fn main() {
    std::process::exit(sockrelay::client::args::main(
        sockrelay::client::Side::Dest,
        "sockrelay-dest",
    ));
}
