//! `cs-driver`: the CheckSync command line.

fn main() {
    println!("cs-driver: run | dump | restore | inspect | primary | backup");
}
