// `sqlx::migrate!` embeds the migration files at compile time; cargo only
// knows to rebuild when one is added or changed if we tell it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
