//! Plugins built against `loopcall:provider@0.2.0`: the generated bindings, the
//! imports wired to the host capabilities, and the adapter to the host's
//! provider types. What changed since 0.1.0: `crypto.sign`, `end-session`, and
//! the call's channel in `token-request`.

use async_trait::async_trait;
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{HasData, InstancePre, Linker};

use super::imports::crypto::SigningAlgorithm;
use super::state::CallState;
use super::types::{
    CallType, Grant, GuestError, ProviderInfo, Role, Session, SessionRequest, TokenRequest,
    wasm_error,
};
use super::versions::{PluginInstance, PluginPre, WitVersion};

#[allow(clippy::all, dead_code, unused_imports, unused_mut, unused_variables)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/since_v0.2.0",
        // HTTP waits on the network and signing takes a millisecond of CPU
        // (RSA), so both are async; every other import is a quick,
        // synchronous host call. Every import may trap so the host can stop a
        // plugin that abuses one (a log flood, an oversized random request).
        imports: {
            "loopcall:provider/http.send": async | trappable,
            "loopcall:provider/crypto.sign": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

use bindings::exports::loopcall::provider::provider as guest;
use bindings::loopcall::provider::{crypto, types};

pub(crate) const VERSION: WitVersion = WitVersion {
    version: "0.2.0",
    world: "loopcall:provider/plugin@0.2.0",
    export: EXPORT,
    export_functions: EXPORT_FUNCTIONS,
    imports: IMPORTS,
    add_to_linker,
    prepare,
};

/// The export every 0.2 plugin provides.
const EXPORT: &str = "loopcall:provider/provider@0.2.0";
const EXPORT_FUNCTIONS: &[&str] = &[
    "describe",
    "create-session",
    "issue-token",
    "verify-token",
    "end-session",
];
/// The interfaces a 0.2 plugin may import.
const IMPORTS: &[&str] = &[
    "loopcall:provider/types@0.2.0",
    "loopcall:provider/http@0.2.0",
    "loopcall:provider/crypto@0.2.0",
    "loopcall:provider/clock@0.2.0",
    "loopcall:provider/log@0.2.0",
    "loopcall:provider/settings@0.2.0",
];

struct HostData;

impl HasData for HostData {
    type Data<'a> = &'a mut CallState;
}

fn add_to_linker(linker: &mut Linker<CallState>) -> anyhow::Result<()> {
    bindings::Plugin::add_to_linker::<CallState, HostData>(linker, |state| state)
        .map_err(wasm_error)
}

fn prepare(pre: InstancePre<CallState>) -> anyhow::Result<Box<dyn PluginPre>> {
    Ok(Box::new(Pre::new(pre)?))
}

/// A 0.2 component, linked and type-checked against the world.
struct Pre {
    pre: InstancePre<CallState>,
    indices: bindings::PluginIndices,
}

impl Pre {
    fn new(pre: InstancePre<CallState>) -> anyhow::Result<Self> {
        let indices = bindings::PluginIndices::new(&pre).map_err(wasm_error)?;
        // Check every export's signature now, so a mismatched plugin is refused
        // at start-up and not on its first call.
        let engine = pre.engine();
        let component_type = pre.component().component_type();
        let instance_type = pre.instance_type();
        let Some(ComponentItem::ComponentInstance(export)) = component_type
            .get_export(engine, EXPORT)
            .map(|item| item.ty)
        else {
            anyhow::bail!("its export {EXPORT} is not an interface instance");
        };
        for name in EXPORT_FUNCTIONS {
            let Some(ComponentItem::ComponentFunc(func)) =
                export.get_export(engine, name).map(|item| item.ty)
            else {
                anyhow::bail!("its export {EXPORT} has no function {name}");
            };
            let checked = match *name {
                "describe" => func.typecheck::<(), (types::ProviderInfo,)>(&instance_type),
                "create-session" => func.typecheck::<(types::SessionRequest,), (Result<types::Session, types::ProviderError>,)>(
                    &instance_type,
                ),
                "issue-token" => {
                    func.typecheck::<(types::TokenRequest,), (Result<String, types::ProviderError>,)>(&instance_type)
                }
                "verify-token" => func.typecheck::<(String, String), (Result<types::Grant, types::ProviderError>,)>(&instance_type),
                _ => func.typecheck::<(String, Option<String>), (Result<(), types::ProviderError>,)>(&instance_type),
            };
            checked.map_err(|err| {
                wasm_error(err).context(format!("{EXPORT}#{name} has the wrong signature"))
            })?;
        }
        Ok(Self { pre, indices })
    }
}

#[async_trait]
impl PluginPre for Pre {
    async fn instantiate(
        &self,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<Box<dyn PluginInstance>> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let plugin = self.indices.load(&mut *store, &instance)?;
        Ok(Box::new(Instance(plugin)))
    }
}

struct Instance(bindings::Plugin);

impl Instance {
    fn guest(&self) -> &guest::Guest {
        self.0.loopcall_provider_provider()
    }
}

#[async_trait]
impl PluginInstance for Instance {
    async fn describe(&self, store: &mut Store<CallState>) -> wasmtime::Result<ProviderInfo> {
        let info = self.guest().call_describe(&mut *store).await?;
        Ok(ProviderInfo {
            name: info.name,
            version: info.version,
            call_types: info.call_types.into_iter().map(call_type_from).collect(),
            roles: info.roles.into_iter().map(role_from).collect(),
            verifies_tokens: info.verifies_tokens,
        })
    }

    async fn create_session(
        &self,
        store: &mut Store<CallState>,
        request: &SessionRequest<'_>,
    ) -> wasmtime::Result<Result<Session, GuestError>> {
        let request = types::SessionRequest {
            call_id: request.call_id.to_owned(),
            call_type: call_type_to(request.call_type),
            caller: request.caller.to_owned(),
            callee: request.callee.to_owned(),
            channel: request.channel.map(str::to_owned),
        };
        let result = self
            .guest()
            .call_create_session(&mut *store, &request)
            .await?;
        Ok(result
            .map(|session| Session {
                session_id: session.session_id,
                api_key: session.api_key,
            })
            .map_err(guest_error))
    }

    async fn issue_token(
        &self,
        store: &mut Store<CallState>,
        request: &TokenRequest<'_>,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        let request = types::TokenRequest {
            session_id: request.session_id.to_owned(),
            role: role_to(request.role),
            identity: request.identity.to_owned(),
            display_name: request.display_name.to_owned(),
            lifetime_seconds: request.lifetime_seconds,
            channel: request.channel.map(str::to_owned),
        };
        Ok(self
            .guest()
            .call_issue_token(&mut *store, &request)
            .await?
            .map_err(guest_error))
    }

    async fn verify_token(
        &self,
        store: &mut Store<CallState>,
        token: &str,
        session_id: &str,
    ) -> wasmtime::Result<Result<Grant, GuestError>> {
        let result = self
            .guest()
            .call_verify_token(&mut *store, token, session_id)
            .await?;
        Ok(result
            .map(|grant| Grant {
                session_id: grant.session_id,
                role: role_from(grant.role),
                identity: grant.identity,
                expires_at: grant.expires_at,
            })
            .map_err(guest_error))
    }

    async fn end_session(
        &self,
        store: &mut Store<CallState>,
        session_id: &str,
        channel: Option<&str>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(self
            .guest()
            .call_end_session(&mut *store, session_id, channel)
            .await?
            .map_err(guest_error))
    }
}

super::versions::type_conversions_since_v0_1_0!(types);

// ---- imports ----

super::imports::host_imports_since_v0_1_0!(bindings::loopcall::provider);

impl crypto::Host for CallState {
    super::imports::crypto_since_v0_1_0!();

    async fn sign(
        &mut self,
        algorithm: crypto::SigningAlgorithm,
        private_key_pem: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let algorithm = match algorithm {
            crypto::SigningAlgorithm::Rs256 => SigningAlgorithm::Rs256,
            crypto::SigningAlgorithm::Es256 => SigningAlgorithm::Es256,
        };
        CallState::sign(self, algorithm, private_key_pem, data).await
    }
}
