//! A fake DNS server on 127.0.0.1:0 (UDP), for `net.resolver`: it answers A
//! queries from a table the test changes at will, with TTL 0, so that the
//! server under test sees every change at its next lookup (DNS rebinding).
//! Other names get NXDOMAIN; other record types an empty answer; names
//! [`FakeDns::silence`]d get no answer at all (a DNS server that hangs).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<Ipv4Addr>>,
    /// Names whose queries are never answered.
    silent: HashSet<String>,
    /// Names asked for (A queries), in order.
    queries: Vec<String>,
}

pub struct FakeDns {
    /// `127.0.0.1:PORT`, for `net.resolver`.
    pub addr: String,
    zone: Arc<Mutex<Zone>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeDns {
    pub async fn start() -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let server = tokio::spawn(serve(socket, zone.clone()));
        FakeDns { addr, zone, server }
    }

    /// From now on `name` resolves to `ips` (none: NXDOMAIN).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone
            .lock()
            .unwrap()
            .records
            .insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// From now on queries for `name` get no answer: the resolver waits
    /// until it gives up.
    pub fn silence(&self, name: &str) {
        self.zone
            .lock()
            .unwrap()
            .silent
            .insert(name.to_ascii_lowercase());
    }

    /// How many A queries for `name` arrived so far.
    pub fn queries_for(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        let zone = self.zone.lock().unwrap();
        zone.queries.iter().filter(|asked| **asked == name).count()
    }

    /// `[net]` config that resolves through this server.
    pub fn config(&self) -> String {
        format!("[net]\nresolver = {:?}\n\n", self.addr)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        let Some(reply) = answer(&query, &zone) else {
            continue;
        };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(query: &Message, zone: &Mutex<Zone>) -> Option<Message> {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let mut zone = zone.lock().unwrap();
    for question in &query.queries {
        reply.add_query(question.clone());
        let name = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if zone.silent.contains(&name) {
            if question.query_type() == RecordType::A {
                zone.queries.push(name);
            }
            return None;
        }
        let Some(ips) = zone.records.get(&name).cloned() else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        if question.query_type() != RecordType::A {
            continue;
        }
        zone.queries.push(name);
        for ip in ips {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                0,
                RData::A(A(ip)),
            ));
        }
    }
    Some(reply)
}
