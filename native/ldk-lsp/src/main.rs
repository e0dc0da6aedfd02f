//! ldk-lsp: an ldk-node that sells just-in-time channels over LSPS2 (bLIP-52), for the devnet.
//!
//!     ldk-lsp --storage DIR --listen PORT --control PORT --rpc HOST:PORT --rpc-user U
//!             --rpc-password P [--token T] [--client-trusts-lsp] [--fee-ppm N]
//!             [--min-fee-msat N] [--over-provisioning-ppm N] [--min-payment-msat N]
//!             [--max-payment-msat N]
//!
//! The node runs on regtest with a bitcoind-RPC chain source (the devnet's shim). Once started
//! it prints one JSON line on stdout (`node_id`, `listen`, `control`) and answers a line
//! protocol on the loopback control port, one JSON object per request line:
//!
//!     info | address | balances | sync | channels
//!     connect NODE_ID HOST:PORT
//!     open NODE_ID HOST:PORT SATS PUSH_MSAT
//!     stop
//!
//! Every answer has `"ok": true` and the fields asked for, or `"ok": false` and `"error"`.
//! Node events are consumed on their own thread and logged on stderr. The process stops its
//! node and exits when its standard input closes, so it never outlives the devnet that
//! started it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::str::FromStr;
use std::sync::Arc;
use std::thread;

use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::bitcoin::Network;
use ldk_node::config::Config;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::liquidity::LSPS2ServiceConfig;
use ldk_node::logger::LogLevel;
use ldk_node::{Builder, Event, Node};

struct Args {
	storage: String,
	listen: u16,
	control: u16,
	rpc_host: String,
	rpc_port: u16,
	rpc_user: String,
	rpc_password: String,
	service: LSPS2ServiceConfig,
}

fn usage(why: &str) -> ! {
	eprintln!("ldk-lsp: {why}");
	eprintln!(
		"usage: ldk-lsp --storage DIR --listen PORT --control PORT --rpc HOST:PORT \
		 --rpc-user U --rpc-password P [--token T] [--client-trusts-lsp] [--fee-ppm N] \
		 [--min-fee-msat N] [--over-provisioning-ppm N] [--min-payment-msat N] \
		 [--max-payment-msat N]"
	);
	exit(2)
}

fn number<T: FromStr>(flag: &str, value: Option<String>) -> T {
	let text = value.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
	text.parse().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {text}")))
}

fn parse_args() -> Args {
	let mut storage = None;
	let (mut listen, mut control) = (None, None);
	let mut rpc = None;
	let (mut rpc_user, mut rpc_password) = (String::new(), String::new());
	let mut service = LSPS2ServiceConfig {
		require_token: None,
		advertise_service: false,
		channel_opening_fee_ppm: 10_000,
		channel_over_provisioning_ppm: 0,
		min_channel_opening_fee_msat: 1_000,
		min_channel_lifetime: 144,
		max_client_to_self_delay: 1_008,
		min_payment_size_msat: 1_000,
		max_payment_size_msat: 10_000_000_000,
		client_trusts_lsp: false,
	};
	let mut it = std::env::args().skip(1);
	while let Some(flag) = it.next() {
		match flag.as_str() {
			"--storage" => storage = it.next(),
			"--listen" => listen = Some(number::<u16>(&flag, it.next())),
			"--control" => control = Some(number::<u16>(&flag, it.next())),
			"--rpc" => rpc = it.next(),
			"--rpc-user" => rpc_user = it.next().unwrap_or_default(),
			"--rpc-password" => rpc_password = it.next().unwrap_or_default(),
			"--token" => service.require_token = it.next(),
			"--client-trusts-lsp" => service.client_trusts_lsp = true,
			"--fee-ppm" => service.channel_opening_fee_ppm = number(&flag, it.next()),
			"--min-fee-msat" => service.min_channel_opening_fee_msat = number(&flag, it.next()),
			"--over-provisioning-ppm" => {
				service.channel_over_provisioning_ppm = number(&flag, it.next())
			},
			"--min-payment-msat" => service.min_payment_size_msat = number(&flag, it.next()),
			"--max-payment-msat" => service.max_payment_size_msat = number(&flag, it.next()),
			other => usage(&format!("unknown argument {other}")),
		}
	}
	let rpc = rpc.unwrap_or_else(|| usage("--rpc is required"));
	let (rpc_host, rpc_port) = rpc.rsplit_once(':').unwrap_or_else(|| usage("--rpc HOST:PORT"));
	Args {
		storage: storage.unwrap_or_else(|| usage("--storage is required")),
		listen: listen.unwrap_or_else(|| usage("--listen is required")),
		control: control.unwrap_or_else(|| usage("--control is required")),
		rpc_host: rpc_host.to_string(),
		rpc_port: number("--rpc", Some(rpc_port.to_string())),
		rpc_user,
		rpc_password,
		service,
	}
}

fn build(args: &Args) -> Arc<Node> {
	let mut config = Config::default();
	config.storage_dir_path = args.storage.clone();
	config.network = Network::Regtest;
	let builder = Builder::from_config(config);
	let listen = SocketAddress::from_str(&format!("127.0.0.1:{}", args.listen))
		.unwrap_or_else(|_| usage("bad --listen"));
	builder.set_listening_addresses(vec![listen]).unwrap_or_else(|e| usage(&format!("{e:?}")));
	builder.set_chain_source_bitcoind_rpc(
		args.rpc_host.clone(),
		args.rpc_port,
		args.rpc_user.clone(),
		args.rpc_password.clone(),
	);
	builder.set_filesystem_logger(Some(format!("{}/ldk_node.log", args.storage)), Some(LogLevel::Debug));
	builder.set_liquidity_provider_lsps2(args.service.clone());
	builder.build().unwrap_or_else(|e| {
		eprintln!("ldk-lsp: cannot build the node: {e:?}");
		exit(1)
	})
}

/// A JSON string literal (the only escaping the answers need).
fn quoted(text: &str) -> String {
	let mut out = String::from("\"");
	for c in text.chars() {
		match c {
			'"' => out.push_str("\\\""),
			'\\' => out.push_str("\\\\"),
			c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
			c => out.push(c),
		}
	}
	out.push('"');
	out
}

fn peer(node_id: Option<&str>, address: Option<&str>) -> Result<(PublicKey, SocketAddress), String> {
	let node_id = PublicKey::from_str(node_id.unwrap_or("")).map_err(|_| "bad node id".to_string())?;
	let address =
		SocketAddress::from_str(address.unwrap_or("")).map_err(|_| "bad address".to_string())?;
	Ok((node_id, address))
}

fn answer(node: &Node, line: &str) -> Result<String, String> {
	let mut words = line.split_whitespace();
	let err = |e: ldk_node::NodeError| format!("{e:?}");
	match words.next().unwrap_or("") {
		"info" => Ok(format!("\"node_id\":{}", quoted(&node.node_id().to_string()))),
		"address" => {
			let address = node.onchain_payment().new_address().map_err(err)?;
			Ok(format!("\"address\":{}", quoted(&address.to_string())))
		},
		"balances" => {
			let b = node.list_balances();
			Ok(format!(
				"\"onchain_sats\":{},\"spendable_onchain_sats\":{},\"lightning_sats\":{}",
				b.total_onchain_balance_sats,
				b.spendable_onchain_balance_sats,
				b.total_lightning_balance_sats
			))
		},
		"sync" => node.sync_wallets().map(|_| String::new()).map_err(err),
		"channels" => {
			let rows: Vec<String> = node
				.list_channels()
				.iter()
				.map(|c| {
					format!(
						"{{\"channel_id\":{},\"user_channel_id\":{},\"counterparty\":{},\"value_sats\":{},\"ready\":{},\
						 \"usable\":{},\"outbound_msat\":{},\"inbound_msat\":{},\
						 \"funding_txid\":{}}}",
						quoted(&c.channel_id.to_string()),
						quoted(&c.user_channel_id.0.to_string()),
						quoted(&c.counterparty_node_id.to_string()),
						c.channel_value_sats,
						c.is_channel_ready,
						c.is_usable,
						c.outbound_capacity_msat,
						c.inbound_capacity_msat,
						c.funding_txo
							.map(|o| quoted(&o.txid.to_string()))
							.unwrap_or_else(|| "null".to_string()),
					)
				})
				.collect();
			Ok(format!("\"channels\":[{}]", rows.join(",")))
		},
		"connect" => {
			let (node_id, address) = peer(words.next(), words.next())?;
			node.connect(node_id, address, true).map(|_| String::new()).map_err(err)
		},
		"open" => {
			let (node_id, address) = peer(words.next(), words.next())?;
			let sats: u64 = words.next().and_then(|w| w.parse().ok()).ok_or("bad amount")?;
			let push: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
			let push = if push > 0 { Some(push) } else { None };
			let id = node.open_channel(node_id, address, sats, push, None).map_err(err)?;
			Ok(format!("\"user_channel_id\":{}", quoted(&id.0.to_string())))
		},
		"" => Err("empty request".to_string()),
		other => Err(format!("unknown request {other}")),
	}
}

fn serve(node: Arc<Node>, stream: TcpStream) {
	let mut writer = match stream.try_clone() {
		Ok(w) => w,
		Err(_) => return,
	};
	for line in BufReader::new(stream).lines() {
		let Ok(line) = line else { return };
		if line.trim() == "stop" {
			let _ = node.stop();
			let _ = writeln!(writer, "{{\"ok\":true}}");
			exit(0);
		}
		let reply = match answer(&node, line.trim()) {
			Ok(fields) if fields.is_empty() => "{\"ok\":true}".to_string(),
			Ok(fields) => format!("{{\"ok\":true,{fields}}}"),
			Err(e) => format!("{{\"ok\":false,\"error\":{}}}", quoted(&e)),
		};
		if writeln!(writer, "{reply}").is_err() {
			return;
		}
	}
}

fn main() {
	let args = parse_args();
	let control = TcpListener::bind(("127.0.0.1", args.control)).unwrap_or_else(|e| {
		eprintln!("ldk-lsp: cannot listen on the control port: {e}");
		exit(1)
	});
	let node = build(&args);
	if let Err(e) = node.start() {
		eprintln!("ldk-lsp: cannot start the node: {e:?}");
		exit(1)
	}
	let events = Arc::clone(&node);
	thread::spawn(move || loop {
		let event = events.wait_next_event();
		match &event {
			Event::ChannelReady { .. }
			| Event::ChannelPending { .. }
			| Event::ChannelClosed { .. }
			| Event::PaymentForwarded { .. } => eprintln!("ldk-lsp: event {event:?}"),
			_ => {},
		}
		let _ = events.event_handled();
	});
	let watched = Arc::clone(&node);
	thread::spawn(move || {
		let mut sink = Vec::new();
		let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
		let _ = watched.stop();
		exit(0)
	});
	println!(
		"{{\"node_id\":{},\"listen\":\"127.0.0.1:{}\",\"control\":\"127.0.0.1:{}\"}}",
		quoted(&node.node_id().to_string()),
		args.listen,
		args.control
	);
	for stream in control.incoming().flatten() {
		let node = Arc::clone(&node);
		thread::spawn(move || serve(node, stream));
	}
}
