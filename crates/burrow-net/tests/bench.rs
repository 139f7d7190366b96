//! Per-operation timings: `cargo test -p burrow-net --test bench -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use burrow_net::Mode;
use common::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "timing report, run by hand"]
fn operation_timings() {
    let env = Env::new();
    let runs = 20u32;
    let mut t: [Vec<Duration>; 8] = Default::default();
    let site = env.fake.ns_ip;
    for i in 0..runs {
        let id = format!("bench{i}");
        let addr = env.cfg.subnet.host(10 + i).unwrap();
        let time = |slot: &mut Vec<Duration>, f: &mut dyn FnMut()| {
            let start = Instant::now();
            f();
            slot.push(start.elapsed());
        };
        time(&mut t[0], &mut || drop(env.net.attach(&id, addr).unwrap()));
        time(&mut t[1], &mut || drop(env.net.attach(&id, addr).unwrap()));
        time(&mut t[2], &mut || {
            env.net.set_mode(addr, Mode::Policy, true).unwrap()
        });
        time(&mut t[3], &mut || {
            env.net.admit(addr, site, Duration::from_secs(30)).unwrap()
        });
        time(&mut t[4], &mut || {
            env.net.set_mode(addr, Mode::Open, false).unwrap()
        });
        let other = env.cfg.subnet.host(100 + i).unwrap();
        time(&mut t[7], &mut || {
            drop(env.net.attach_in_mode(&id, other, Mode::Open, true).unwrap())
        });
        time(&mut t[5], &mut || env.net.detach(&id).unwrap());
    }
    time_setup(&env, &mut t[6]);
    let names = [
        "attach",
        "re-attach",
        "set_mode(policy)",
        "admit",
        "set_mode(open)",
        "detach",
        "setup",
        "re-address",
    ];
    for (name, samples) in names.iter().zip(t) {
        println!("{name:>18}: median {:?} (n={})", median(samples), runs);
    }
}

fn time_setup(env: &Env, out: &mut Vec<Duration>) {
    for _ in 0..20 {
        let start = Instant::now();
        burrow_net::HostNet::setup(env.cfg.clone()).unwrap();
        out.push(start.elapsed());
    }
}
