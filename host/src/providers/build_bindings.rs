//! Build-script half of the provider runtime: generates the typed wasmtime
//! bindings for every published version of the `loop:provider` WIT package.
//!
//! This is exactly what `wasmtime::component::bindgen!` does, run from
//! `build.rs` instead of the macro because wasmtime 48's generator does not
//! escape a package *namespace* that is a Rust keyword: our package is
//! `loop:provider`, and the macro emits `pub mod loop { … }` and `loop::…`
//! paths, which do not parse. We run the same generator (wasmtime's own
//! `wasmtime-internal-wit-bindgen`, pinned to the wasmtime version) and rename
//! that one module to `loop_`, the spelling the generator already uses for
//! keyword identifiers everywhere else.

use std::path::Path;

use wasmtime_internal_wit_bindgen::{FunctionFilter, FunctionFlags, Opts};

/// `(WIT folder under wit/, generated file in OUT_DIR)`, one per published version.
const VERSIONS: &[(&str, &str)] = &[("since_v0.1.0", "since_v0_1_0_bindings.rs")];

pub fn generate(manifest_dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    for (folder, file) in VERSIONS {
        let wit = manifest_dir.join("../wit").join(folder);
        println!("cargo:rerun-if-changed={}", wit.display());
        let mut resolve = wit_parser::Resolve::default();
        let (package, _) = resolve.push_path(&wit)?;
        let world = resolve.select_world(&[package], Some("plugin"))?;

        let mut opts = Opts::default();
        // Only HTTP waits on the network; every other import is a quick,
        // synchronous host call. Every import may trap so the host can stop a
        // plugin that abuses one (a log flood, an oversized random request).
        opts.imports.push(
            FunctionFilter::Name("loop:provider/http.send".into()),
            FunctionFlags::ASYNC | FunctionFlags::TRAPPABLE,
        );
        opts.imports
            .push(FunctionFilter::Default, FunctionFlags::TRAPPABLE);
        opts.exports
            .push(FunctionFilter::Default, FunctionFlags::ASYNC);

        let source = escape_keyword_namespace(&opts.generate(&mut resolve, world)?);
        std::fs::write(out_dir.join(file), source)?;
    }
    Ok(())
}

/// `loop` is the only segment the generator leaves unescaped; `loop::` and
/// `mod loop` cannot occur in valid Rust otherwise, so the rename is exact.
fn escape_keyword_namespace(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 64);
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < source.len() {
        let rest = &source[i..];
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word_start && rest.starts_with("loop") {
            let after = rest[4..].trim_start();
            let follows_mod = out.trim_end().ends_with("mod");
            if after.starts_with("::") || (follows_mod && after.starts_with('{')) {
                out.push_str("loop_");
                i += 4;
                continue;
            }
        }
        let ch = rest.chars().next().expect("non-empty rest");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}
