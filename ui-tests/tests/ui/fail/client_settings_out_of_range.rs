// TCP keep-alive is set in whole seconds up to 32767 s: a fraction or a longer value would be
// refused by the system, which keeps its 2-hour default; a pool size past u32 is refused, not
// clamped.
use resilience_runtime::client;

fn main() {
    let _fraction = client!("keepalive_in_ms", config = "../bad_clients.toml");
    let _too_long = client!("keepalive_too_long", config = "../bad_clients.toml");
    let _pool = client!("pool_too_large", config = "../bad_clients.toml");
    let _cut = client!("keepalive_fraction", config = "../bad_clients.toml");
}
