//! `cs-check`: run CheckSync's correctness checkers on recorded results.
fn main() {
    eprintln!("cs-check: not implemented yet");
    std::process::exit(2);
}
