fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("sockrelay-relay {}", sockrelay::cli::VERSION);
        return;
    }
    eprintln!("sockrelay-relay: not implemented yet");
    std::process::exit(2);
}
