//! Provider runtime benchmark (being written).
fn main() {}
