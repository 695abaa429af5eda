//! The published versions of the `loopcall:provider` WIT package this host
//! links, and the one provider interface the rest of the host sees whatever
//! version a plugin was built against.
//!
//! Supporting a new version is a `since_vX_Y_Z.rs` module (generated
//! bindings, imports wired to [`super::imports`], conversions to the types in
//! [`super::types`]) and one line in [`VERSIONS`].

use async_trait::async_trait;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, Store};

use super::imports::wasi;
use super::state::CallState;
use super::types::{
    Grant, GuestError, ProviderInfo, Session, SessionRequest, TokenRequest, wasm_error,
};
use super::{since_v0_1_0, since_v0_2_0};

/// Every supported version, oldest first.
pub(crate) const VERSIONS: &[&WitVersion] = &[&since_v0_1_0::VERSION, &since_v0_2_0::VERSION];

/// The exports of every version start with this; anything else is not a provider.
const PROVIDER_EXPORT_PREFIX: &str = "loopcall:provider/provider@";

/// What the host needs to know about one published WIT version.
pub(crate) struct WitVersion {
    /// The package version, e.g. "0.2.0".
    pub version: &'static str,
    /// The world a component of this version targets, for humans.
    pub world: &'static str,
    /// The interface a component of this version exports; it selects the version.
    pub export: &'static str,
    pub export_functions: &'static [&'static str],
    /// The interfaces a component of this version may import, and no others.
    pub imports: &'static [&'static str],
    /// Adds this version's imports to a linker.
    pub add_to_linker: fn(&mut Linker<CallState>) -> anyhow::Result<()>,
    /// Type-checks a linked component's exports and wraps it.
    pub prepare: fn(InstancePre<CallState>) -> anyhow::Result<Box<dyn PluginPre>>,
}

/// A component linked against its version, ready to instantiate per call.
#[async_trait]
pub(crate) trait PluginPre: Send + Sync {
    async fn instantiate(
        &self,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<Box<dyn PluginInstance>>;
}

/// One live instance, whatever its version, in the host's types.
#[async_trait]
pub(crate) trait PluginInstance: Send + Sync {
    async fn describe(&self, store: &mut Store<CallState>) -> wasmtime::Result<ProviderInfo>;

    async fn create_session(
        &self,
        store: &mut Store<CallState>,
        request: &SessionRequest<'_>,
    ) -> wasmtime::Result<Result<Session, GuestError>>;

    async fn issue_token(
        &self,
        store: &mut Store<CallState>,
        request: &TokenRequest<'_>,
    ) -> wasmtime::Result<Result<String, GuestError>>;

    async fn verify_token(
        &self,
        store: &mut Store<CallState>,
        token: &str,
        session_id: &str,
    ) -> wasmtime::Result<Result<Grant, GuestError>>;

    /// The call on `session_id` has ended; versions without `end-session` do nothing.
    async fn end_session(
        &self,
        store: &mut Store<CallState>,
        session_id: &str,
        channel: Option<&str>,
    ) -> wasmtime::Result<Result<(), GuestError>>;
}

/// One linker per version: a component sees exactly its own version's imports.
pub(crate) struct Linkers(Vec<(&'static WitVersion, Linker<CallState>)>);

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> anyhow::Result<Self> {
        let mut linkers = Vec::with_capacity(VERSIONS.len());
        for version in VERSIONS {
            let mut linker = Linker::new(engine);
            (version.add_to_linker)(&mut linker)?;
            // Whatever the version, a component may import WASI 0.2; what it
            // gets is the same locked-down grant (imports/wasi.rs).
            wasi::add_to_linker(&mut linker)?;
            linkers.push((*version, linker));
        }
        Ok(Self(linkers))
    }
}

/// The version `component` was built against (by the provider interface it
/// exports), checked against that version's world and linked.
pub(crate) fn link(
    engine: &Engine,
    linkers: &Linkers,
    component: &Component,
) -> anyhow::Result<(&'static WitVersion, Box<dyn PluginPre>)> {
    let component_type = component.component_type();
    let exports: Vec<&str> = component_type
        .exports(engine)
        .map(|(name, _)| name)
        .collect();
    let Some((version, linker)) = linkers
        .0
        .iter()
        .find(|(version, _)| exports.contains(&version.export))
    else {
        let supported: Vec<&str> = VERSIONS.iter().map(|version| version.export).collect();
        // Every problem at once, so a vendor fixes them in one round.
        let mut problems = vec![match exports
            .iter()
            .find(|name| name.starts_with(PROVIDER_EXPORT_PREFIX))
        {
            Some(other) => format!(
                "it exports {other}, a version this server does not support (supported: {})",
                supported.join(", ")
            ),
            None => format!(
                "it does not export {} (its exports: {})",
                supported.join(" or "),
                if exports.is_empty() {
                    "none".to_owned()
                } else {
                    exports.join(", ")
                }
            ),
        }];
        // Without a version, judge the imports against the newest one.
        let newest = VERSIONS.last().expect("at least one supported version");
        problems.extend(import_problems(engine, component, newest));
        anyhow::bail!("{}", problems.join("; "));
    };
    let mut problems = Vec::new();
    if let Some(ComponentItem::ComponentInstance(export)) = component_type
        .get_export(engine, version.export)
        .map(|item| item.ty)
    {
        let present: Vec<&str> = export.exports(engine).map(|(name, _)| name).collect();
        let missing: Vec<&str> = version
            .export_functions
            .iter()
            .copied()
            .filter(|name| !present.contains(name))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "its export {} lacks the function(s) {}",
                version.export,
                missing.join(", ")
            ));
        }
    }
    problems.extend(import_problems(engine, component, version));
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    let pre = linker.instantiate_pre(component).map_err(|err| {
        wasm_error(err).context(format!(
            "its imports do not match the {} world",
            version.world
        ))
    })?;
    Ok((version, (version.prepare)(pre)?))
}

fn import_problems(engine: &Engine, component: &Component, version: &WitVersion) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .filter(|(name, _)| {
            !version.imports.contains(name) && wasi::grant_for(name).is_none()
        })
        .map(|(name, _)| {
            if wasi::is_wasi(name) {
                format!(
                    "it imports {name}, which Loop does not grant to plugins (Loop grants WASI 0.2's {}; outbound HTTP goes through loopcall:provider/http)",
                    wasi::GRANTED.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
                )
            } else {
                format!(
                    "it imports {name}, which the host does not provide (a {} provider may import only {}, and WASI 0.2)",
                    version.world,
                    version.imports.join(", ")
                )
            }
        })
        .collect()
}

/// What `component` imports from WASI and how each is granted, for
/// `plugins check`; refused ones are reported by [`link`].
pub(crate) fn wasi_grants(engine: &Engine, component: &Component) -> Vec<(String, &'static str)> {
    component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| wasi::grant_for(name).map(|how| (name.to_owned(), how)))
        .collect()
}

/// The conversions between the host's provider types and one version's
/// generated `types` module, for the types whose WIT did not change since
/// 0.1.0 (errors, call types, roles): `$types` is that module.
macro_rules! type_conversions_since_v0_1_0 {
    ($types:ident) => {
        fn guest_error(err: $types::ProviderError) -> GuestError {
            match err {
                $types::ProviderError::Misconfigured(message) => GuestError::Misconfigured(message),
                $types::ProviderError::Unavailable(message) => GuestError::Unavailable(message),
                $types::ProviderError::Rejected(message) => GuestError::Rejected(message),
            }
        }

        fn call_type_from(call_type: $types::CallType) -> CallType {
            match call_type {
                $types::CallType::Audio => CallType::Audio,
                $types::CallType::AudioVideo => CallType::AudioVideo,
            }
        }

        fn call_type_to(call_type: CallType) -> $types::CallType {
            match call_type {
                CallType::Audio => $types::CallType::Audio,
                CallType::AudioVideo => $types::CallType::AudioVideo,
            }
        }

        fn role_from(role: $types::Role) -> Role {
            match role {
                $types::Role::Publisher => Role::Publisher,
                $types::Role::Subscriber => Role::Subscriber,
                $types::Role::Moderator => Role::Moderator,
            }
        }

        fn role_to(role: Role) -> $types::Role {
            match role {
                Role::Publisher => $types::Role::Publisher,
                Role::Subscriber => $types::Role::Subscriber,
                Role::Moderator => $types::Role::Moderator,
            }
        }
    };
}
pub(crate) use type_conversions_since_v0_1_0;
