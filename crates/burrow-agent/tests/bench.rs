//! Quick timings, not assertions: `cargo test --release -p burrow-agent --test bench --
//! --ignored --nocapture`. Set `BURROW_AGENT_BIN` to time another build of the agent
//! (e.g. the static musl binary).

mod common;

use std::process::Command;
use std::time::Instant;

use burrow_agent_proto::v1::exec_output;
use common::*;

fn agent() -> Agent {
    let bin = std::env::var("BURROW_AGENT_BIN").unwrap_or_else(|_| AGENT.to_owned());
    Agent::start_with(|sock| {
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen").arg(sock);
        cmd
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing figures, run on demand"]
async fn timings() {
    let mut agent = agent();
    let mut conn = agent.connect().await;

    for _ in 0..50 {
        run(&mut conn, start(&["true"])).await;
    }
    let mut rtts: Vec<f64> = (0..1000).map(|_| 0.0).collect::<Vec<_>>();
    for rtt in &mut rtts {
        let t = Instant::now();
        let out = run(&mut conn, start(&["/bin/true"])).await;
        *rtt = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(out.exit_code, 0);
    }
    rtts.sort_by(f64::total_cmp);
    println!(
        "exec rtt of `true` over 1000 runs: median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        rtts[500], rtts[900], rtts[990]
    );

    for argv in [
        &["head", "-c", "1073741824", "/dev/zero"][..],
        &["sh", "-c", "cat /dev/zero | head -c 1073741824"][..],
    ] {
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let mut exec = open(&mut conn, start(argv)).await.unwrap();
            let mut total = 0usize;
            while let Some(msg) = exec.output.message().await.unwrap() {
                if let Some(exec_output::Kind::Stdout(b)) = msg.kind {
                    total += b.len();
                }
            }
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(total, 1 << 30);
            best = best.max(total as f64 / secs / 1e6);
        }
        println!("stdout throughput of {argv:?}: best of 3 {best:.0} MB/s");
    }
}
