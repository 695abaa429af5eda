// The provider runtime's typed plugin bindings (see that file for why they are
// generated here rather than by `bindgen!`).
#[path = "src/providers/build_bindings.rs"]
mod build_bindings;

// `sqlx::migrate!` embeds the migration files at compile time; cargo only
// knows to rebuild when one is added or changed if we tell it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=src/providers/build_bindings.rs");
    let manifest_dir =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    build_bindings::generate(&manifest_dir, &out_dir)
        .expect("generating the provider plugin bindings from wit/");
}
