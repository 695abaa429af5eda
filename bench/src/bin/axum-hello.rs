//! The framework's ceiling for `loop-bench original`: axum on tokio's default
//! multi-threaded runtime answering `GET /calls/{token}` with a small constant
//! JSON body, the shape of Loop's answer to that route, and nothing else: no
//! storage, no logging, no middleware. Measured with the same wrk script and
//! settings as Loop and the original, it is what any axum server can reach on
//! the machine of the run.
//!
//! `axum-hello --port PORT` prints `listening on http://127.0.0.1:PORT` once
//! it accepts connections.

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "axum hello-world: GET /calls/{token} answers a small JSON body")]
struct Args {
    /// Port on 127.0.0.1 (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

async fn call_url(Path(_token): Path<String>) -> Json<Value> {
    Json(json!({"calleeFriendlyName": "Bob", "urlCreationDate": 1796000000}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/calls/{token}", get(call_url));
    axum::serve(listener, app).await?;
    Ok(())
}
