//! `edgepush-bench`: the load tool. It opens many client connections, publishes
//! over MQTT at a set rate (or ramps to find the maximum), and measures
//! delivery, latency, connect rate, and, for servers on this machine, RSS per
//! idle connection and CPU per 100,000 delivered messages, for edgepush and
//! for mosquitto's own WebSocket listener (MQTT 3.1.1 over WebSocket), in one
//! run, alternating, with the ratios. A binary of its own: gateway builds do
//! not carry it; run it from a laptop against a gateway, or beside the server.

mod floor;
mod load;
mod mqtt;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::rustls::ClientConfig;
use load::{Census, Dial, Kind, Recorder};

pub const USAGE: &str = "\
USAGE:
    edgepush-bench [OPTIONS]                     edgepush vs mosquitto, both started here
    edgepush-bench --edgepush URL --broker HOST:PORT [--edgepush-pid PID]
    edgepush-bench --mosquitto-ws URL --broker HOST:PORT [--mosquitto-pid PID]
    edgepush-bench floor [--clients N] [--rate R] [--secs S] [--runs K]
                                                 the kernel floor: the same frames, one
                                                 send(2) per delivery, nothing else
                                                 (default 1000 clients x 25/s, 8 s, 3 runs)

With neither --edgepush nor --mosquitto-ws, each run starts a mosquitto (MQTT
and websockets listeners on loopback) and `edgepush run` linked to it (the
`edgepush` beside this program, else the one on PATH, or --server-bin), and
measures both in turn. Otherwise it measures the servers named; --broker is
where the tool publishes; a PID (server on this machine) adds RSS and CPU.

OPTIONS:
    --clients N          clients for the delivery ramp (default 1000)
    --idle N[,N...]      idle populations for RSS per connection (default 1000,5000)
    --idle-secs S        idle CPU window at the first population (default 60:
                         several heartbeat intervals)
    --secs S             length of each publishing step (default 4)
    --rate R             one step at R messages/s instead of a ramp
    --ramp R0,FACTOR,MAX ramp from R0 messages/s, times FACTOR per step, while
                         >= 99.9 % are delivered with p99 < 100 ms (default 25,1.6,20000)
    --latency N@R        the latency step: N clients, R messages/s (default 100@200)
    --runs K             runs, alternating the targets; medians reported (default 3)
    --json FILE          also write every measurement as a JSON line (- for stdout)
    --quick              a smoke run: 20 clients, --idle 20, 1 s steps, 1 run
    --server-bin PATH    the edgepush binary to start (default: beside this program, else PATH)
    --idle-only          only the idle scenarios (RSS, connects, idle CPU): with
                         --idle-secs 300, the idle CPU over five minutes
    --broker-nagle       the tool's mosquitto without `set_tcp_nodelay true` (a stock
                         mosquitto.conf; the package's drop-in sets it)
    --tls                the pair the tool starts serves wss (a self-signed certificate made
                         here: edgepush's `[tls]`, mosquitto's websockets listener with
                         certfile/keyfile) and every figure is measured over wss: TLS 1.3,
                         every connect a full handshake (no session resumption)
";

/// A server under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub kind: Kind,
    pub url: String,
    /// For a `wss://` URL: the TLS config that trusts the server's certificate.
    pub tls: Option<Arc<ClientConfig>>,
    /// Where the tool publishes (MQTT over TCP).
    pub broker: String,
    /// Processes whose CPU counts as the server's (edgepush counts its broker too).
    pub cpu_pids: Vec<u32>,
    /// The process whose RSS grows with connections.
    pub rss_pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    pub idle: Vec<usize>,
    pub idle_secs: f64,
    pub secs: f64,
    pub rate: Option<f64>,
    pub ramp: (f64, f64, f64),
    pub latency: (usize, f64),
    pub runs: usize,
    pub json: Option<PathBuf>,
    /// The `edgepush` binary the local pair runs.
    pub server_bin: Option<PathBuf>,
    /// The local mosquitto keeps Nagle's algorithm on its sockets.
    pub broker_nagle: bool,
    /// Only the idle scenarios.
    pub idle_only: bool,
    /// The local pair serves wss.
    pub tls: bool,
    pub external: Vec<Target>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clients: 1000,
            idle: vec![1000, 5000],
            idle_secs: 60.0,
            secs: 4.0,
            rate: None,
            ramp: (25.0, 1.6, 20_000.0),
            latency: (100, 200.0),
            runs: 3,
            json: None,
            server_bin: None,
            broker_nagle: false,
            idle_only: false,
            tls: false,
            external: Vec::new(),
        }
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: not a number: {v:?}"))
}

/// Parses the arguments after `bench`.
///
/// # Errors
/// An unknown flag or a bad value, named.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let (mut ep, mut mq, mut broker, mut ep_pid, mut mq_pid) = (None, None, None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--clients" => o.clients = num(a, it.next())?,
            "--idle" => {
                let v = it.next().ok_or("--idle needs N[,N...]")?;
                o.idle = v
                    .split(',')
                    .map(|n| n.parse().map_err(|_| format!("--idle: not a number: {n:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--idle-secs" => o.idle_secs = num(a, it.next())?,
            "--secs" => o.secs = num(a, it.next())?,
            "--rate" => o.rate = Some(num(a, it.next())?),
            "--ramp" => {
                let v = it.next().ok_or("--ramp needs R0,FACTOR,MAX")?;
                let p: Vec<f64> = v.split(',').filter_map(|n| n.parse().ok()).collect();
                match p[..] {
                    [r, f, m] if r > 0.0 && f > 1.0 && m >= r => o.ramp = (r, f, m),
                    _ => return Err(format!("--ramp: want R0,FACTOR,MAX with FACTOR > 1, got {v:?}")),
                }
            }
            "--latency" => {
                let v = it.next().ok_or("--latency needs N@R")?;
                let (n, r) = v.split_once('@').ok_or_else(|| format!("--latency: want N@R, got {v:?}"))?;
                o.latency = (num("--latency", Some(&n.to_owned()))?, num("--latency", Some(&r.to_owned()))?);
            }
            "--runs" => o.runs = num(a, it.next())?,
            "--json" => o.json = Some(it.next().ok_or("--json needs a FILE")?.into()),
            "--server-bin" => o.server_bin = Some(it.next().ok_or("--server-bin needs a PATH")?.into()),
            "--broker-nagle" => o.broker_nagle = true,
            "--idle-only" => o.idle_only = true,
            "--tls" => o.tls = true,
            "--quick" => {
                o.clients = 20;
                o.idle = vec![20];
                o.idle_secs = 1.0;
                o.secs = 1.0;
                o.ramp = (25.0, 2.0, 50.0);
                o.latency = (10, 50.0);
                o.runs = 1;
            }
            "--edgepush" => ep = Some(it.next().ok_or("--edgepush needs a ws:// URL")?.clone()),
            "--mosquitto-ws" => mq = Some(it.next().ok_or("--mosquitto-ws needs a ws:// URL")?.clone()),
            "--broker" => broker = Some(it.next().ok_or("--broker needs HOST:PORT")?.clone()),
            "--edgepush-pid" => ep_pid = Some(num(a, it.next())?),
            "--mosquitto-pid" => mq_pid = Some(num(a, it.next())?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.clients == 0 || o.idle.contains(&0) || o.runs == 0 || o.latency.0 == 0 {
        return Err("--clients, --idle, --latency and --runs must be at least 1".into());
    }
    if o.secs <= 0.0 || o.idle_secs <= 0.0 || o.rate.is_some_and(|r| r <= 0.0) || o.latency.1 <= 0.0 {
        return Err("--secs, --idle-secs, --rate and --latency rates must be positive".into());
    }
    if o.tls && (ep.is_some() || mq.is_some()) {
        return Err("--tls is for the pair the tool starts, not with --edgepush or --mosquitto-ws".into());
    }
    if ep.is_some() || mq.is_some() {
        let broker = broker.ok_or("--broker HOST:PORT is needed with --edgepush or --mosquitto-ws")?;
        for (url, kind, name, pid) in
            [(ep, Kind::Edgepush, "edgepush", ep_pid), (mq, Kind::MqttWs, "mosquitto", mq_pid)]
        {
            if let Some(url) = url {
                if !url.starts_with("ws://") {
                    return Err(format!("not a ws:// URL: {url}"));
                }
                let pids = pid.into_iter().collect();
                o.external.push(Target {
                    name,
                    kind,
                    url,
                    tls: None,
                    broker: broker.clone(),
                    cpu_pids: pids,
                    rss_pid: pid,
                });
            }
        }
    }
    Ok(o)
}

/// One measurement: a JSON line and a row of the table.
#[derive(Debug, Clone)]
pub struct Record {
    pub run: usize,
    pub target: &'static str,
    pub scenario: String,
    pub fields: Vec<(&'static str, f64)>,
}

impl Record {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    pub fn json(&self) -> String {
        let mut s = format!("{{\"run\":{},\"target\":\"{}\",\"scenario\":\"{}\"", self.run, self.target, self.scenario);
        for (k, v) in &self.fields {
            if v.is_finite() {
                let _ = write!(s, ",\"{k}\":{}", round(*v));
            } else {
                let _ = write!(s, ",\"{k}\":null");
            }
        }
        s.push('}');
        s
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

struct Sink {
    json: Option<Box<dyn std::io::Write>>,
    records: Vec<Record>,
}

impl Sink {
    fn emit(&mut self, r: Record) {
        let mut row = format!("run {} {:<9} {:<14}", r.run, r.target, r.scenario);
        for (k, v) in &r.fields {
            let _ = write!(row, " {k}={}", round(*v));
        }
        eprintln!("{row}");
        if let Some(j) = self.json.as_mut() {
            let _ = writeln!(j, "{}", r.json());
        }
        self.records.push(r);
    }
}

/// The tool's own executor: as many threads as CPUs, for the clients' tasks.
fn executor() -> &'static smol::Executor<'static> {
    static EX: std::sync::OnceLock<&'static smol::Executor<'static>> = std::sync::OnceLock::new();
    EX.get_or_init(|| {
        let ex: &'static smol::Executor<'static> = Box::leak(Box::new(smol::Executor::new()));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            std::thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))
                .expect("spawn a bench thread");
        }
        ex
    })
}

/// Raises the soft file-descriptor limit to the hard one (thousands of sockets).
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to our own struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is 32 bits on armv7
    let limit = r.rlim_cur as u64;
    limit
}

/// A crowd of clients on the tool's executor; dropping it closes them.
struct Crowd {
    kind: Kind,
    dial: Dial,
    census: Arc<Census>,
    rec: Arc<Recorder>,
    gate: load::Gate,
    tasks: Vec<smol::Task<()>>,
}

impl Crowd {
    fn new(t: &Target, rec: &Arc<Recorder>) -> Crowd {
        Crowd {
            kind: t.kind,
            dial: Dial { url: t.url.clone(), tls: t.tls.clone() },
            census: Arc::new(Census::default()),
            rec: rec.clone(),
            gate: async_channel::bounded(64),
            tasks: Vec::new(),
        }
    }

    fn ready(&self) -> usize {
        self.census.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Grows to `n` clients and waits until all are subscribed. Returns connections per second.
    fn grow(&mut self, n: usize) -> Result<f64, String> {
        let start = Instant::now();
        let before = self.tasks.len();
        while self.tasks.len() < n {
            let i = self.tasks.len();
            let (gate, census, rec) = (self.gate.clone(), self.census.clone(), self.rec.clone());
            let f = load::client(self.kind, self.dial.clone(), i, gate, census, rec);
            self.tasks.push(executor().spawn(f));
        }
        let limit = Duration::from_secs(30) + Duration::from_millis(20 * (n - before) as u64);
        while self.ready() < n {
            let failed = self.census.failed.load(std::sync::atomic::Ordering::Relaxed);
            if failed > 0 {
                let e = self.census.last_error.lock().unwrap().clone().unwrap_or_default();
                return Err(format!("{failed} of {n} clients failed to connect to {}: {e}", self.dial.url));
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "only {} of {n} clients connected to {} in {limit:?}",
                    self.ready(),
                    self.dial.url
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((n - before) as f64 / start.elapsed().as_secs_f64())
    }

    /// Closes clients past the first `n`.
    fn shrink(&mut self, n: usize) {
        self.tasks.truncate(n);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ready() > n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn rss_kib(t: &Target) -> Option<f64> {
    t.rss_pid.and_then(load::rss_kib).map(|k| k as f64)
}

/// Publishes at `rate` for `secs` to `crowd` and measures what arrived.
fn step(t: &Target, crowd: &Crowd, rate: f64, secs: f64) -> Result<Vec<(&'static str, f64)>, String> {
    let clients = crowd.ready();
    let me = std::process::id();
    crowd.rec.begin();
    let (cpu0, sys0) = (load::cpu_of(&t.cpu_pids), load::sys_of(&t.cpu_pids));
    let (tool0, start) = (load::cpu_of(&[me]), Instant::now());
    let published = load::publish(&t.broker, rate, secs).map_err(|e| format!("publishing to {}: {e}", t.broker))?;
    let window = start.elapsed().as_secs_f64();
    let expected = published * clients as u64;
    // Drain: until everything arrived or nothing more does for half a second.
    let mut last = (crowd.rec.delivered(), Instant::now());
    while crowd.rec.delivered() < expected && last.1.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(20));
        let d = crowd.rec.delivered();
        if d != last.0 {
            last = (d, Instant::now());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let delivered = crowd.rec.delivered();
    let lat = crowd.rec.latency();
    let cpu = load::cpu_of(&t.cpu_pids) - cpu0;
    let sys = load::sys_of(&t.cpu_pids) - sys0;
    let mut f = vec![
        ("clients", clients as f64),
        ("rate", rate),
        ("published", published as f64),
        ("delivered_per_s", delivered as f64 / window),
        ("delivered_fraction", if expected == 0 { 0.0 } else { delivered as f64 / expected as f64 }),
        ("p50_ms", lat.p50_ms),
        ("p99_ms", lat.p99_ms),
        ("p999_ms", lat.p999_ms),
        ("max_ms", lat.max_ms),
        ("tool_cpu_cores", (load::cpu_of(&[me]) - tool0) / elapsed),
    ];
    if !t.cpu_pids.is_empty() {
        f.push(("server_cpu_s_per_100k", if delivered == 0 { f64::NAN } else { cpu / delivered as f64 * 1e5 }));
        f.push(("server_cpu_cores", cpu / elapsed));
        f.push(("server_kernel_share", if cpu > 0.0 { sys / cpu } else { f64::NAN }));
    }
    Ok(f)
}

fn sustained(f: &[(&str, f64)]) -> bool {
    let get = |k| f.iter().find(|(n, _)| *n == k).map_or(0.0, |(_, v)| *v);
    get("delivered_fraction") >= 0.999 && get("p99_ms") < 100.0
}

/// Every scenario against one target.
fn measure(t: &Target, o: &Options, run: usize, sink: &mut Sink) -> Result<(), String> {
    let rec = Recorder::new();
    let mut crowd = Crowd::new(t, &rec);
    let emit = |sink: &mut Sink, scenario: String, fields| sink.emit(Record { run, target: t.name, scenario, fields });

    // Idle: RSS per connection at each population, connect rate, idle CPU at the first.
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_kib(t);
    for (i, &n) in o.idle.iter().enumerate() {
        let connect_rate = crowd.grow(n)?;
        std::thread::sleep(Duration::from_secs(2));
        let mut f = vec![("clients", n as f64), ("connect_per_s", connect_rate)];
        if let (Some(b), Some(now)) = (base, rss_kib(t)) {
            f.push(("rss_per_conn_kib", (now - b) / n as f64));
        }
        if i == 0 && !t.cpu_pids.is_empty() {
            let c0 = load::cpu_of(&t.cpu_pids);
            let alone: Vec<u32> = t.rss_pid.into_iter().collect();
            let a0 = load::cpu_of(&alone);
            std::thread::sleep(Duration::from_secs_f64(o.idle_secs));
            f.push(("idle_cpu_s_per_min", (load::cpu_of(&t.cpu_pids) - c0) * 60.0 / o.idle_secs));
            // The server process alone (edgepush's figure above includes its broker).
            if !alone.is_empty() {
                f.push(("idle_cpu_server_s_per_min", (load::cpu_of(&alone) - a0) * 60.0 / o.idle_secs));
            }
        }
        emit(sink, format!("idle-{n}"), f);
    }
    if o.idle_only {
        return Ok(());
    }

    // Delivery: a ramp (or one step) with `clients` subscribers.
    crowd.shrink(o.clients);
    crowd.grow(o.clients)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut rate = o.rate.unwrap_or(o.ramp.0);
    let mut best: Option<Vec<(&str, f64)>> = None;
    let mut first = true;
    loop {
        let f = step(t, &crowd, rate, o.secs)?;
        let ok = sustained(&f);
        if first {
            emit(sink, "common".into(), f.clone());
            first = false;
        }
        emit(sink, "step".into(), f.clone());
        if ok {
            best = Some(f);
        }
        rate *= o.ramp.1;
        if !ok || o.rate.is_some() || rate > o.ramp.2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let max = best.unwrap_or_else(|| vec![("delivered_per_s", 0.0)]);
    emit(sink, "max".into(), max);
    drop(crowd);

    // Latency at a modest load.
    std::thread::sleep(Duration::from_secs(1));
    let mut crowd = Crowd::new(t, &rec);
    crowd.grow(o.latency.0)?;
    std::thread::sleep(Duration::from_millis(300));
    let f = step(t, &crowd, o.latency.1, o.secs)?;
    emit(sink, "latency".into(), f);
    Ok(())
}

/// A mosquitto and an edgepush started on loopback for one run.
struct Local {
    dir: PathBuf,
    children: Vec<Child>,
    targets: Vec<Target>,
    start_ms: Vec<(&'static str, f64)>,
}

impl Drop for Local {
    fn drop(&mut self) {
        // edgepush first, so it does not log the broker going away.
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Spawns and times until the port accepts a connection.
fn spawn_listening(cmd: &mut Command, port: u16, what: &str) -> Result<(Child, f64), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok((child, start.elapsed().as_secs_f64() * 1000.0));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not listen on {addr} within 10 s"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The `edgepush` to start: `--server-bin`, else the one beside this program
/// (a cargo build puts both in one folder), else `edgepush` from PATH.
fn server_bin(o: &Options) -> PathBuf {
    if let Some(p) = &o.server_bin {
        return p.clone();
    }
    let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("edgepush")));
    beside.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("edgepush"))
}

/// What `--tls` adds to the pair the tool starts: edgepush's `[tls]`
/// section, the lines that put mosquitto's websockets listener on the same
/// certificate, and a client config that trusts it and never resumes a
/// session (so every connect is a full handshake).
struct Tls {
    edgepush: String,
    mosquitto: String,
    client: Arc<ClientConfig>,
}

/// A self-signed certificate for 127.0.0.1 written to `dir` as `cert.pem`
/// and `key.pem`, and the settings that use it. The files are world-readable:
/// mosquitto, started as root, drops to its own user before its websockets
/// listener reads them.
fn certificate(dir: &std::path::Path) -> Result<Tls, String> {
    let k = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(|e| format!("making a certificate: {e}"))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    for (path, text) in [(&cert, k.cert.pem()), (&key, k.key_pair.serialize_pem())] {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut client = (*edgepush_client::trusting(&cert)?).clone();
    client.resumption = futures_rustls::rustls::client::Resumption::disabled();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    Ok(Tls {
        edgepush: format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"),
        mosquitto: format!("certfile {cert}\nkeyfile {key}\n"),
        client: Arc::new(client),
    })
}

fn start_local(run: usize, server: &std::path::Path, nagle: bool, tls: bool) -> Result<Local, String> {
    let dir = std::env::temp_dir().join(format!("edgepush-bench-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut local = Local { dir: dir.clone(), children: Vec::new(), targets: Vec::new(), start_ms: Vec::new() };
    let (mq_tcp, mq_ws, ep) = (free_port()?, free_port()?, free_port()?);
    let tls = if tls { Some(certificate(&dir)?) } else { None };
    let client_tls = tls.as_ref().map(|t| t.client.clone());
    // mosquitto's TLS is on its websockets listener only, like edgepush's.
    let mq_tls = tls.as_ref().map_or("", |t| t.mosquitto.as_str());
    let tls_section = tls.as_ref().map_or("", |t| t.edgepush.as_str());
    let conf = dir.join("mosquitto.conf");
    let text = format!(
        "listener {mq_tcp} 127.0.0.1\nlistener {mq_ws} 127.0.0.1\nprotocol websockets\n{mq_tls}\
         allow_anonymous true\npersistence false\nlog_type error\nlog_type warning\nset_tcp_nodelay {}\n",
        !nagle
    );
    std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let (child, ms) = spawn_listening(&mut cmd, mq_tcp, "mosquitto (apt-get install mosquitto)")?;
    let mq_pid = child.id();
    local.children.push(child);
    local.start_ms.push(("mosquitto", ms));

    let cfg = dir.join("edgepush.toml");
    let text = format!(
        "listen = \"127.0.0.1:{ep}\"\n[mqtt]\nport = {mq_tcp}\nclient-id = \"edgepush-bench-{}-{run}\"\n\
         [limits]\nmax-connections = 8192\nmax-connections-per-ip = 8192\nconnections-per-second-per-ip = 1000000\n\
         [auth]\nmode = \"none\"\n[log]\nlevel = \"error\"\n{tls_section}",
        std::process::id()
    );
    std::fs::write(&cfg, text).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let mut cmd = Command::new(server);
    cmd.args(["run", "--config"]).arg(&cfg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    let (child, ms) = spawn_listening(&mut cmd, ep, "edgepush")?;
    let ep_pid = child.id();
    local.children.push(child);
    local.start_ms.push(("edgepush", ms));
    // Wait for its broker link (/healthz 200) before measuring.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(ep, client_tls.as_ref()) {
        if Instant::now() > deadline {
            return Err("edgepush did not link to the broker within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let broker = format!("127.0.0.1:{mq_tcp}");
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    local.targets = vec![
        Target {
            name: "edgepush",
            kind: Kind::Edgepush,
            url: format!("{scheme}://127.0.0.1:{ep}/ws"),
            tls: client_tls.clone(),
            broker: broker.clone(),
            cpu_pids: vec![ep_pid, mq_pid],
            rss_pid: Some(ep_pid),
        },
        Target {
            name: "mosquitto",
            kind: Kind::MqttWs,
            url: format!("{scheme}://127.0.0.1:{mq_ws}/"),
            tls: client_tls,
            broker,
            cpu_pids: vec![mq_pid],
            rss_pid: Some(mq_pid),
        },
    ];
    Ok(local)
}

/// `GET /healthz` answers 200 (over TLS with `tls`).
fn healthy(port: u16, tls: Option<&Arc<ClientConfig>>) -> bool {
    use futures_rustls::rustls::{pki_types::ServerName, ClientConnection, StreamOwned};
    use std::io::Read;
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    let answered = match tls {
        None => {
            let mut s = s;
            s.write_all(request).is_ok() && s.read_exact(&mut head).is_ok()
        }
        Some(config) => {
            let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let Ok(conn) = ClientConnection::new(config.clone(), name) else { return false };
            let mut s = StreamOwned::new(conn, s);
            s.write_all(request).is_ok() && s.read_exact(&mut head).is_ok()
        }
    };
    answered && head.ends_with(b"200")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `(edgepush median, mosquitto median) -> (holds, what the target is)`.
type Check = fn(f64, f64) -> (bool, &'static str);

/// One row of the summary: a metric's median per target, the ratio, the target it must meet.
struct Row {
    label: String,
    scenario: String,
    field: &'static str,
    check: Option<Check>,
}

fn rows(o: &Options) -> Vec<Row> {
    let r = |label: String, scenario: String, field, check| Row { label, scenario, field, check };
    let mut v = Vec::new();
    // Over wss the target is at most 2x the ws figure, which a run without --tls gives.
    let rss_check: Option<Check> =
        if o.tls { None } else { Some(|e, m| (e <= 4.0 && e <= m * 2.0 / 3.0, "<= 4 KiB and <= 2/3")) };
    for (i, n) in o.idle.iter().enumerate() {
        v.push(r(
            format!("RSS per idle connection, {n} clients (KiB)"),
            format!("idle-{n}"),
            "rss_per_conn_kib",
            rss_check,
        ));
        if i == 0 {
            v.push(r(format!("connects per second, {n} clients"), format!("idle-{n}"), "connect_per_s", None));
            v.push(r(
                format!("idle CPU s per minute, {n} clients"),
                format!("idle-{n}"),
                "idle_cpu_s_per_min",
                Some(|e, _| (e < 0.1, "< 0.1")),
            ));
            v.push(r(
                format!("  the server process alone, {n} clients"),
                format!("idle-{n}"),
                "idle_cpu_server_s_per_min",
                Some(|e, _| (e <= 0.05, "<= 0.05")),
            ));
        }
    }
    let c = o.clients;
    v.push(r(
        format!("max sustained delivery, {c} clients (msg/s)"),
        "max".into(),
        "delivered_per_s",
        Some(|e, m| (e >= 3.0 * m, ">= 3x")),
    ));
    v.push(r("  p99 at that rate (ms)".into(), "max".into(), "p99_ms", None));
    v.push(r("  server CPU s per 100k delivered at that rate".into(), "max".into(), "server_cpu_s_per_100k", None));
    v.push(r("  load tool CPU at that rate (cores)".into(), "max".into(), "tool_cpu_cores", None));
    let r0 = o.rate.unwrap_or(o.ramp.0);
    v.push(r(
        format!("server CPU s per 100k delivered ({c} x {r0}/s)"),
        "common".into(),
        "server_cpu_s_per_100k",
        Some(|e, m| (e <= m / 3.0, "<= 1/3")),
    ));
    let (n, rate) = o.latency;
    for (f, check) in [
        ("p50_ms", None),
        ("p99_ms", Some((|e, m| (e <= m, "<= mosquitto")) as Check)),
        ("p999_ms", None),
        ("max_ms", None),
    ] {
        v.push(r(format!("latency {f}, {n} clients x {rate}/s"), "latency".into(), f, check));
    }
    v.push(r(format!("delivered fraction, {n} clients x {rate}/s"), "latency".into(), "delivered_fraction", None));
    v.push(r("start to listening (ms)".into(), "start".into(), "ms", Some(|e, _| (e < 50.0, "< 50"))));
    v
}

fn summary(o: &Options, records: &[Record]) -> String {
    let targets: Vec<&'static str> = {
        let mut t: Vec<&'static str> = records.iter().map(|r| r.target).collect();
        t.sort();
        t.dedup();
        t
    };
    let med = |target: &str, scenario: &str, field: &str| {
        median(
            records
                .iter()
                .filter(|r| r.target == target && r.scenario == scenario)
                .filter_map(|r| r.get(field))
                .collect(),
        )
    };
    let runs = records.iter().map(|r| r.run).max().unwrap_or(0);
    let mut out = format!(
        "\nmedians of {runs} run(s){}\n",
        if o.tls { ", over wss (TLS; its RSS target: at most 2x the figure of a run without --tls)" } else { "" }
    );
    let _ = write!(out, "{:<52}", "metric");
    for t in &targets {
        let _ = write!(out, " {t:>12}");
    }
    let both = targets.contains(&"edgepush") && targets.contains(&"mosquitto");
    if both {
        let _ = write!(out, " {:>8}  target", "ratio");
    }
    out.push('\n');
    for row in rows(o) {
        let vals: Vec<f64> = targets.iter().map(|t| med(t, &row.scenario, row.field)).collect();
        if vals.iter().all(|v| v.is_nan()) {
            continue;
        }
        let _ = write!(out, "{:<52}", row.label);
        for v in &vals {
            let _ = write!(out, " {:>12}", fmt_num(*v));
        }
        if both {
            let (e, m) = (med("edgepush", &row.scenario, row.field), med("mosquitto", &row.scenario, row.field));
            let _ = write!(
                out,
                " {:>8}",
                if m.abs() > 0.0 && e.is_finite() && m.is_finite() { format!("{:.2}", e / m) } else { "-".into() }
            );
            if let Some(check) = row.check {
                let (holds, what) = check(e, m);
                let _ = write!(out, "  {what}: {}", if holds { "holds" } else { "MISSED" });
            }
        }
        out.push('\n');
    }
    out
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Runs the benchmark; prints progress rows to stderr and the summary table to stdout.
///
/// # Errors
/// A server could not be started or reached, or clients failed to connect.
pub fn run(o: &Options) -> Result<Vec<Record>, String> {
    let nofile = raise_nofile();
    let biggest = o.idle.iter().copied().chain([o.clients, o.latency.0]).max().unwrap_or(0);
    if (biggest as u64) + 64 > nofile {
        return Err(format!("{biggest} clients need more file descriptors than the limit of {nofile} (ulimit -n)"));
    }
    let json: Option<Box<dyn std::io::Write>> = match &o.json {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?)),
    };
    let mut sink = Sink { json, records: Vec::new() };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let over = if o.tls { ", over wss (TLS 1.3, full handshakes)" } else { "" };
    eprintln!("edgepush-bench: {cpus} CPUs, {} run(s), fd limit {nofile}{over}", o.runs);
    for run in 1..=o.runs {
        let local =
            if o.external.is_empty() { Some(start_local(run, &server_bin(o), o.broker_nagle, o.tls)?) } else { None };
        let mut targets = local.as_ref().map_or_else(|| o.external.clone(), |l| l.targets.clone());
        if run % 2 == 0 {
            targets.reverse();
        }
        if run == 1 {
            for t in &targets {
                eprintln!("{}: {}", t.name, t.url);
            }
        }
        if let Some(l) = &local {
            for (name, ms) in &l.start_ms {
                sink.emit(Record { run, target: name, scenario: "start".into(), fields: vec![("ms", *ms)] });
            }
        }
        for t in &targets {
            measure(t, o, run, &mut sink)?;
        }
    }
    let table = summary(o, &sink.records);
    if o.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    Ok(sink.records)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    if args.first().is_some_and(|a| a == "floor") {
        return floor_command(&args[1..]);
    }
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("edgepush-bench: {e}\n\n{USAGE}");
            return std::process::ExitCode::from(64);
        }
    };
    match run(&o) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgepush-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `edgepush-bench floor`: CPU per 100,000 deliveries of a bare sender, the median of the runs.
fn floor_command(args: &[String]) -> std::process::ExitCode {
    let (mut clients, mut rate, mut secs, mut runs) = (1000usize, 25.0f64, 8.0f64, 3usize);
    let mut it = args.iter();
    let parsed: Result<(), String> = (|| {
        while let Some(a) = it.next() {
            match a.as_str() {
                "--clients" => clients = num(a, it.next())?,
                "--rate" => rate = num(a, it.next())?,
                "--secs" => secs = num(a, it.next())?,
                "--runs" => runs = num(a, it.next())?,
                other => return Err(format!("floor: unknown argument {other:?}")),
            }
        }
        if clients == 0 || runs == 0 || rate <= 0.0 || secs <= 0.0 {
            return Err("floor: --clients, --rate, --secs and --runs must be positive".into());
        }
        Ok(())
    })();
    if let Err(e) = parsed {
        eprintln!("edgepush-bench: {e}\n\n{USAGE}");
        return std::process::ExitCode::from(64);
    }
    let nofile = raise_nofile();
    if (2 * clients as u64) + 64 > nofile {
        eprintln!("edgepush-bench: floor: {clients} socket pairs need more file descriptors than {nofile}");
        return std::process::ExitCode::FAILURE;
    }
    let mut figures = Vec::new();
    for run in 1..=runs {
        match floor::run(clients, rate, secs) {
            Ok(f) => {
                eprintln!(
                    "run {run} floor     {clients} x {rate}/s  deliveries={} cpu_s_per_100k={} kernel_share={}",
                    f.deliveries,
                    round(f.cpu_s_per_100k),
                    round(f.kernel_share)
                );
                figures.push(f.cpu_s_per_100k);
            }
            Err(e) => {
                eprintln!("edgepush-bench: floor: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("floor: {} CPU-s per 100k deliveries ({clients} x {rate}/s, median of {runs})", fmt_num(median(figures)));
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn arguments_and_their_errors() {
        let o = parse_args(&args("--clients 10 --idle 5,7 --ramp 10,2,100 --latency 3@40 --runs 2")).unwrap();
        assert_eq!(
            (o.clients, o.idle.clone(), o.ramp, o.latency, o.runs),
            (10, vec![5, 7], (10.0, 2.0, 100.0), (3, 40.0), 2)
        );
        assert!(o.external.is_empty());
        assert!(!o.idle_only && !o.broker_nagle, "by default: every scenario, the broker without Nagle's delay");
        let o = parse_args(&args("--idle-only --broker-nagle")).unwrap();
        assert!(o.idle_only && o.broker_nagle && !o.tls, "ws unless --tls");
        assert!(parse_args(&args("--quick --tls")).unwrap().tls);
        let o = parse_args(&args("--edgepush ws://gw:8080/ws --broker gw:1883 --edgepush-pid 7")).unwrap();
        assert_eq!(o.external.len(), 1);
        assert_eq!((o.external[0].rss_pid, o.external[0].broker.as_str()), (Some(7), "gw:1883"));
        for (bad, says) in [
            ("--edgepush ws://gw/ws", "--broker"),
            ("--clients x", "--clients"),
            ("--ramp 1,1,5", "FACTOR"),
            ("--latency 10", "N@R"),
            ("--frobnicate", "frobnicate"),
            ("--edgepush http://gw/ --broker gw:1", "ws://"),
            ("--runs 0", "at least 1"),
            ("--tls --edgepush ws://gw/ws --broker gw:1", "--tls"),
        ] {
            let e = parse_args(&args(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn records_as_json_lines_and_medians() {
        let r = Record {
            run: 1,
            target: "edgepush",
            scenario: "idle-10".into(),
            fields: vec![("a", 1.23456), ("b", f64::NAN)],
        };
        assert_eq!(r.json(), r#"{"run":1,"target":"edgepush","scenario":"idle-10","a":1.235,"b":null}"#);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
