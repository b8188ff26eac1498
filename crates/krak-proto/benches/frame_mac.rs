//! What authenticating a frame costs on the data path, side by side with what the frame
//! costs without it: encoding a write batch of N pages (with its CRCs), sealing plus
//! opening its MAC trailer (keyed BLAKE3), and, for comparison, two HMAC-SHA256 over the
//! same bytes (what sealing and opening cost with HMAC). `cargo bench -p krak-proto --bench frame_mac`.
//!
//! Prints the median of several timed rounds per batch size, in microseconds per batch and
//! nanoseconds per page. On a shared, noisy machine the numbers swing; compare the columns
//! of one run, not runs.

use std::time::Instant;

use krak_proto::{encode_write_pages, FrameMac, MacKey, PageRef, Side, SlabId, HEADER_LEN, MAC_LEN, PAGE_SIZE};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let key = MacKey::from_bytes([0x5a; 32]);
    let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7) as u8).collect();
    println!(
        "{:>6} {:>11} {:>14} {:>13} {:>16} {:>14}",
        "pages", "encode µs", "seal+open µs", "ns/page", "2×HMAC-SHA256 µs", "HMAC/BLAKE3"
    );
    for pages in [1usize, 16, 64, 256] {
        let refs: Vec<PageRef> = (0..pages as u32).map(|i| PageRef { slab: SlabId(1, 2), page: i }).collect();
        let mut frame = Vec::with_capacity(HEADER_LEN + 4 + pages * (24 + PAGE_SIZE) + MAC_LEN);
        let iters = (4096 / pages).max(16);
        let (mut enc, mut mac, mut hmac) = (Vec::new(), Vec::new(), Vec::new());
        let mut client = FrameMac::new(&key, Side::Client);
        let mut server = FrameMac::new(&key, Side::Server);
        for _ in 0..9 {
            let t = Instant::now();
            for _ in 0..iters {
                frame.clear();
                encode_write_pages(&mut frame, 1, PAGE_SIZE as u32, refs.iter().map(|r| (*r, page.as_slice())));
            }
            enc.push(t.elapsed().as_secs_f64() * 1e6 / iters as f64);
            let t = Instant::now();
            for _ in 0..iters {
                frame.truncate(frame.len().min(HEADER_LEN + 4 + pages * (24 + PAGE_SIZE)));
                client.seal(&mut frame, 0);
                let n = frame.len();
                let head: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
                let trailer: [u8; MAC_LEN] = frame[n - MAC_LEN..].try_into().unwrap();
                server.open(&head, &frame[HEADER_LEN..n - MAC_LEN], &trailer).expect("opens");
            }
            mac.push(t.elapsed().as_secs_f64() * 1e6 / iters as f64);
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(key.tag("seal", &[&frame]));
                std::hint::black_box(key.tag("open", &[&frame]));
            }
            hmac.push(t.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        let (e, m, h) = (median(enc), median(mac), median(hmac));
        println!("{pages:>6} {e:>11.2} {m:>14.2} {:>13.0} {h:>16.2} {:>14.2}", m * 1e3 / pages as f64, h / m);
    }
}
