fn main() {
    println!("imgclass {}", env!("CARGO_PKG_VERSION"));
}
