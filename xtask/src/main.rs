//! Workspace tasks. `cargo xtask plugins` builds every C provider plugin into a
//! WebAssembly component; `cargo xtask plugins --check` verifies that the committed
//! `.wasm` files are exactly what the sources build to.
//!
//! The tools run as libraries (wit-bindgen-c, wit-component) rather than as the
//! `wit-bindgen`/`wasm-tools` CLIs, so a fresh machine needs only cargo and Debian's
//! clang/lld/wasi-libc packages, and the build is cached in `target/`.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use wit_parser::{Resolve, WorldId};

/// The only interfaces a plugin may import: the host's capabilities. Anything else
/// (WASI in particular) would mean the plugin reaches past the capability model.
const WIT_PACKAGE: &str = "loopcall:provider";
/// The published versions a plugin can be built against, oldest first. A
/// plugin is built against the newest unless its folder holds a `wit-version`
/// file naming another (how the 0.1.0 test fixtures stay 0.1.0 plugins).
const WIT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];
/// The file in a plugin folder that pins its WIT version.
const WIT_VERSION_FILE: &str = "wit-version";
const WORLD: &str = "plugin";
const ALLOWED_IMPORTS: &[&str] = &["types", "http", "crypto", "clock", "log", "settings"];
const REQUIRED_EXPORT: &str = "provider";

/// Folders whose sub-folders holding `.c` files are plugins.
const PLUGIN_ROOTS: &[&str] = &["plugins", "tests/plugins"];
/// Header-only helpers shared by the plugins, on the include path of every build.
const INCLUDE_DIR: &str = "plugins/include";

/// Newest first; the committed `.wasm` files are built with the first one.
const CLANGS: &[&str] = &["clang-19", "clang-16", "clang"];
const APT_PACKAGES: &str = "clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc";
const SYSROOT: &str = "/usr";

#[derive(Parser)]
#[command(name = "xtask", about = "Loop workspace tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build every provider plugin (plugins/<name>/, tests/plugins/<name>/) into <name>.wasm.
    Plugins {
        /// Build into a scratch directory and fail if any committed .wasm differs.
        #[arg(long)]
        check: bool,
        /// Only these plugins (folder names); all when empty.
        names: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Task::Plugins { check, names } => plugins(check, &names),
    }
}

struct Plugin {
    name: String,
    dir: PathBuf,
    sources: Vec<PathBuf>,
    /// The `loopcall:provider` version it is built against.
    wit_version: &'static str,
}

/// One WIT version's world and its C bindings, compiled once per build.
struct Bindings {
    version: &'static str,
    resolve: Resolve,
    world: WorldId,
    dir: PathBuf,
    object: PathBuf,
}

impl Plugin {
    fn committed(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.name))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn plugins(check: bool, names: &[String]) -> Result<()> {
    let root = workspace_root();
    let mut found = discover(&root)?;
    if !names.is_empty() {
        for n in names {
            if !found.iter().any(|p| &p.name == n) {
                bail!("no plugin named `{n}` under {}", PLUGIN_ROOTS.join(" or "));
            }
        }
        found.retain(|p| names.contains(&p.name));
    }
    if found.is_empty() {
        bail!("no plugins found under {}", PLUGIN_ROOTS.join(" or "));
    }

    let clang = find_clang()?;
    let build_root = root.join("target/plugin-build");
    // `--check` must not be satisfied by leftovers of a normal build.
    let build_dir = if check {
        build_root.join("check")
    } else {
        build_root.join("out")
    };
    if build_dir.exists() {
        std::fs::remove_dir_all(&build_dir)
            .with_context(|| format!("cannot clear {}", build_dir.display()))?;
    }
    std::fs::create_dir_all(&build_dir)?;

    let mut bindings: Vec<Bindings> = Vec::new();
    for version in WIT_VERSIONS {
        if !found.iter().any(|p| p.wit_version == *version) {
            continue;
        }
        let (resolve, world) = load_world(&root, version)?;
        let dir = build_dir.join(format!("bindings-{version}"));
        generate_bindings(&resolve, world, &dir)?;
        let object = compile(
            &clang,
            &root,
            &dir,
            &dir.join(format!("{WORLD}.c")),
            &build_dir.join(format!("{WORLD}_bindings-{version}.o")),
            false,
        )?;
        bindings.push(Bindings {
            version,
            resolve,
            world,
            dir,
            object,
        });
    }

    let mut stale = Vec::new();
    for plugin in &found {
        let rel = plugin.dir.strip_prefix(&root).unwrap_or(&plugin.dir);
        let out_dir = build_dir.join(rel);
        std::fs::create_dir_all(&out_dir)?;
        let bindings = bindings
            .iter()
            .find(|b| b.version == plugin.wit_version)
            .expect("bindings are built for every version in use");
        let component = build_plugin(&clang, &root, bindings, plugin, &out_dir)
            .with_context(|| format!("building plugin `{}` ({})", plugin.name, rel.display()))?;
        let target = plugin.committed();
        let shown = target.strip_prefix(&root).unwrap_or(&target).display();
        if check {
            match std::fs::read(&target) {
                Ok(committed) if committed == component => println!("ok       {shown}"),
                Ok(_) => {
                    println!("DIFFERS  {shown}");
                    stale.push(shown.to_string());
                }
                Err(_) => {
                    println!("MISSING  {shown}");
                    stale.push(shown.to_string());
                }
            }
        } else {
            let unchanged = std::fs::read(&target).is_ok_and(|c| c == component);
            if !unchanged {
                std::fs::write(&target, &component)
                    .with_context(|| format!("cannot write {shown}"))?;
            }
            println!(
                "{} {shown} ({} bytes)",
                if unchanged { "unchanged" } else { "built    " },
                component.len()
            );
        }
    }
    if !stale.is_empty() {
        bail!(
            "committed plugin components differ from a fresh build (run `cargo xtask plugins` \
             with {} and commit): {}",
            CLANGS[0],
            stale.join(", ")
        );
    }
    Ok(())
}

fn discover(root: &Path) -> Result<Vec<Plugin>> {
    let mut plugins = Vec::new();
    for base in PLUGIN_ROOTS {
        let base = root.join(base);
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "c"))
                .collect();
            if sources.is_empty() {
                continue;
            }
            sources.sort();
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .context("plugin folder names must be UTF-8")?
                .to_string();
            if let Some(other) = plugins.iter().find(|p: &&Plugin| p.name == name) {
                bail!(
                    "two plugins are named `{name}`: {} and {}",
                    other.dir.display(),
                    dir.display()
                );
            }
            let wit_version = match std::fs::read_to_string(dir.join(WIT_VERSION_FILE)) {
                Ok(text) => {
                    let text = text.trim();
                    *WIT_VERSIONS.iter().find(|v| **v == text).with_context(|| {
                        format!(
                            "{}: unknown WIT version {text:?} (known: {})",
                            dir.join(WIT_VERSION_FILE).display(),
                            WIT_VERSIONS.join(", ")
                        )
                    })?
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    WIT_VERSIONS.last().expect("at least one WIT version")
                }
                Err(err) => return Err(err).context(format!("reading {WIT_VERSION_FILE}")),
            };
            plugins.push(Plugin {
                name,
                dir,
                sources,
                wit_version,
            });
        }
    }
    Ok(plugins)
}

fn find_clang() -> Result<String> {
    let clang = CLANGS
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| {
            format!(
                "no C compiler for wasm32 found (tried {}); install the Debian packages: \
                 apt-get install {APT_PACKAGES}",
                CLANGS.join(", ")
            )
        })?;
    let libc = Path::new(SYSROOT).join("lib/wasm32-wasi/libc.a");
    if !libc.exists() {
        bail!(
            "wasi-libc not found at {}; install the Debian packages: apt-get install {APT_PACKAGES}",
            libc.display()
        );
    }
    let rt = Command::new(clang)
        .args(["--target=wasm32-wasi", "-print-libgcc-file-name"])
        .output()
        .context("running clang")?;
    let rt = String::from_utf8_lossy(&rt.stdout).trim().to_string();
    if rt.is_empty() || !Path::new(&rt).exists() {
        bail!(
            "{clang} has no wasm32 runtime library ({rt}); install the Debian packages: \
             apt-get install {APT_PACKAGES}"
        );
    }
    if *clang != CLANGS[0] {
        eprintln!(
            "warning: using {clang}; the committed components are built with {}, so \
             `--check` will report differences",
            CLANGS[0]
        );
    }
    Ok(clang.to_string())
}

fn load_world(root: &Path, version: &str) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let wit_dir = format!("wit/since_v{version}");
    let (pkg, _) = resolve
        .push_dir(root.join(&wit_dir))
        .with_context(|| format!("parsing {wit_dir}"))?;
    let world = resolve.select_world(&[pkg], Some(WORLD))?;
    Ok((resolve, world))
}

fn generate_bindings(resolve: &Resolve, world: WorldId, dir: &Path) -> Result<()> {
    // The component type is embedded after linking (see `build_plugin`), so the
    // generator's object file is not needed.
    let opts = wit_bindgen_c::Opts {
        no_object_file: true,
        ..Default::default()
    };
    let mut files = wit_bindgen_core::Files::default();
    let mut resolve = resolve.clone();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;
    std::fs::create_dir_all(dir)?;
    let mut bindings_c = Vec::new();
    for (name, contents) in files.iter() {
        let mut contents = contents.to_vec();
        if name == format!("{WORLD}.c") {
            // The bindings keep a reference to the symbol their object file would
            // define; the type information itself is embedded after linking.
            contents.extend_from_slice(
                format!("\nvoid __component_type_object_force_link_{WORLD}(void) {{}}\n")
                    .as_bytes(),
            );
            bindings_c = contents.clone();
        }
        std::fs::write(dir.join(name), contents)?;
    }
    if bindings_c.is_empty() {
        bail!("wit-bindgen-c did not produce {WORLD}.c");
    }
    Ok(())
}

/// Flags shared by compiling and linking: what makes the output small and
/// independent of the machine and path it was built on.
fn common_flags(root: &Path) -> Vec<String> {
    vec![
        "--target=wasm32-wasi".into(),
        format!("--sysroot={SYSROOT}"),
        "-O2".into(),
        "-g0".into(),
        format!("-ffile-prefix-map={}=.", root.display()),
    ]
}

fn compile(
    clang: &str,
    root: &Path,
    bindings: &Path,
    source: &Path,
    object: &Path,
    strict: bool,
) -> Result<PathBuf> {
    let mut cmd = Command::new(clang);
    cmd.args(common_flags(root))
        .args(["-std=c11", "-c", "-fno-ident", "-Wall", "-Wextra"])
        .arg("-I")
        .arg(bindings)
        .arg("-I")
        .arg(root.join(INCLUDE_DIR));
    // The generated bindings are not ours to keep warning-free.
    if strict {
        cmd.args(["-Werror", "-Wno-unused-parameter"]);
    }
    cmd.arg(source).arg("-o").arg(object);
    run_tool(&mut cmd, &format!("compiling {}", source.display()))?;
    Ok(object.to_path_buf())
}

fn build_plugin(
    clang: &str,
    root: &Path,
    bindings: &Bindings,
    plugin: &Plugin,
    out_dir: &Path,
) -> Result<Vec<u8>> {
    let mut objects = vec![bindings.object.clone()];
    for source in &plugin.sources {
        let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("src");
        objects.push(compile(
            clang,
            root,
            &bindings.dir,
            source,
            &out_dir.join(format!("{stem}.o")),
            true,
        )?);
    }
    let core_path = out_dir.join(format!("{}.core.wasm", plugin.name));
    let mut link = Command::new(clang);
    link.args(common_flags(root))
        .args(&objects)
        // Names and debug info would only make the output path- and tool-dependent.
        // A reactor: no `main`, the host calls exports on a fresh instance.
        .arg("-mexec-model=reactor")
        .args(["-Wl,--strip-all", "-Wl,-z,stack-size=65536"])
        .arg("-o")
        .arg(&core_path);
    run_tool(&mut link, &format!("linking {}", plugin.name))?;

    let core = std::fs::read(&core_path)?;
    check_core_imports(&core, bindings.version)?;
    let mut core = strip_custom_sections(&core, false)?;
    wit_component::embed_component_metadata(
        &mut core,
        &bindings.resolve,
        bindings.world,
        wit_component::StringEncoding::UTF8,
        false,
    )?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&core)?
        .encode()
        .context("encoding the component")?;
    let component = strip_custom_sections(&component, true)?;
    check_component(&component, bindings.version)?;
    Ok(component)
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("wasm-ld") || stderr.contains("libclang_rt") {
            format!("\n(the wasm linker/runtime comes from: apt-get install {APT_PACKAGES})")
        } else {
            String::new()
        };
        bail!("{what} failed:\n{stderr}{hint}");
    }
    Ok(())
}

fn interface_name<'a>(module: &'a str, version: &str) -> Option<&'a str> {
    module
        .strip_prefix(WIT_PACKAGE)?
        .strip_prefix('/')?
        .strip_suffix(version)?
        .strip_suffix('@')
}

/// Fails on any core import that is not one of the host's WIT interfaces, before
/// wit-component reports it less helpfully (or pulls in a WASI adapter).
fn check_core_imports(core: &[u8], version: &str) -> Result<()> {
    let mut foreign = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(core) {
        if let wasmparser::Payload::ImportSection(reader) = payload? {
            for import in reader.into_imports() {
                let import = import?;
                let allowed = interface_name(import.module, version)
                    .is_some_and(|i| ALLOWED_IMPORTS.contains(&i))
                    // cabi helpers wit-bindgen emits for the component's own exports.
                    || import.module.starts_with("[export]");
                if !allowed {
                    foreign.push(format!("{}::{}", import.module, import.name));
                }
            }
        }
    }
    if !foreign.is_empty() {
        let wasi = foreign.iter().any(|f| f.starts_with("wasi"));
        bail!(
            "the plugin imports outside {WIT_PACKAGE}@{version}: {}{}",
            foreign.join(", "),
            if wasi {
                " (WASI is pulled in by libc I/O such as printf/stdio, exit or abort-like \
                 functions; use the log import and __builtin_trap() instead)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Rebuilds a module or component without its custom sections
/// (`name`, `producers`, `target_features`, ...), which carry tool versions and
/// paths but nothing the runtime needs, recursively through nested modules.
fn strip_custom_sections(wasm: &[u8], component: bool) -> Result<Vec<u8>> {
    use wasm_encoder::RawSection;
    let mut module = wasm_encoder::Module::new();
    let mut comp = wasm_encoder::Component::new();
    let mut parser = wasmparser::Parser::new(0);
    let mut offset = 0usize;
    loop {
        let (consumed, payload) = match parser.parse(&wasm[offset..], true)? {
            wasmparser::Chunk::Parsed { consumed, payload } => (consumed, payload),
            wasmparser::Chunk::NeedMoreData(_) => bail!("truncated wasm"),
        };
        offset += consumed;
        match &payload {
            wasmparser::Payload::End(_) => break,
            wasmparser::Payload::CustomSection(_) => {}
            wasmparser::Payload::CodeSectionStart { size, .. } => {
                let (id, range) = payload.as_section().expect("code section");
                let data = bytes_of(wasm, &range);
                module.section(&RawSection { id, data });
                parser.skip_section();
                offset += *size as usize;
            }
            wasmparser::Payload::ModuleSection {
                unchecked_range, ..
            }
            | wasmparser::Payload::ComponentSection {
                unchecked_range, ..
            } => {
                let (id, _) = payload.as_section().expect("nested section");
                let nested = strip_custom_sections(
                    bytes_of(wasm, unchecked_range),
                    matches!(payload, wasmparser::Payload::ComponentSection { .. }),
                )?;
                comp.section(&RawSection { id, data: &nested });
                // The outer parser steps over nested modules itself; only the
                // bytes fed to it must skip them.
                offset += bytes_of(wasm, unchecked_range).len();
            }
            _ => {
                if let Some((id, range)) = payload.as_section() {
                    let data = bytes_of(wasm, &range);
                    if component {
                        comp.section(&RawSection { id, data });
                    } else {
                        module.section(&RawSection { id, data });
                    }
                }
            }
        }
    }
    Ok(if component {
        comp.finish()
    } else {
        module.finish()
    })
}

fn bytes_of<'a>(wasm: &'a [u8], range: &std::ops::Range<u64>) -> &'a [u8] {
    &wasm[range.start as usize..range.end as usize]
}

/// The final gate: the component imports only the host's interfaces and exports
/// the provider interface, checked on the bytes that get committed.
fn check_component(component: &[u8], version: &str) -> Result<()> {
    let mut features = wasmparser::WasmFeatures::default();
    features.insert(wasmparser::WasmFeatures::COMPONENT_MODEL);
    wasmparser::Validator::new_with_features(features)
        .validate_all(component)
        .context("the component does not validate")?;

    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut parser = wasmparser::Parser::new(0);
    let mut offset = 0usize;
    loop {
        let (consumed, payload) = match parser.parse(&component[offset..], true)? {
            wasmparser::Chunk::Parsed { consumed, payload } => (consumed, payload),
            wasmparser::Chunk::NeedMoreData(_) => bail!("truncated component"),
        };
        offset += consumed;
        match payload {
            wasmparser::Payload::End(_) => break,
            wasmparser::Payload::ModuleSection {
                unchecked_range, ..
            }
            | wasmparser::Payload::ComponentSection {
                unchecked_range, ..
            } => {
                offset += bytes_of(component, &unchecked_range).len();
            }
            wasmparser::Payload::ComponentImportSection(reader) => {
                for import in reader {
                    imports.push(import?.name.full_name().into_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(reader) => {
                for export in reader {
                    exports.push(export?.name.full_name().into_owned());
                }
            }
            _ => {}
        }
    }
    let foreign: Vec<&String> = imports
        .iter()
        .filter(|i| !interface_name(i, version).is_some_and(|n| ALLOWED_IMPORTS.contains(&n)))
        .collect();
    if !foreign.is_empty() {
        bail!(
            "the component imports outside {WIT_PACKAGE}@{version}: {}",
            foreign
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !exports
        .iter()
        .any(|e| interface_name(e, version) == Some(REQUIRED_EXPORT))
    {
        bail!(
            "the component does not export {WIT_PACKAGE}/{REQUIRED_EXPORT}@{version} \
             (exports: {})",
            exports.join(", ")
        );
    }
    Ok(())
}
