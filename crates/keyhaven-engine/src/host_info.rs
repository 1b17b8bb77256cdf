//! `sys/host-info`: facts about the machine the server runs on, in the shape OpenBao
//! reports them (gopsutil's field names). Read from `/proc` and `statvfs` on Linux;
//! elsewhere the lists are empty and the host has only what the standard library
//! knows.

use serde_json::{Map, Value, json};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn trimmed(path: &str) -> String {
    read(path).trim().to_owned()
}

/// `key: value` lines of `/proc/meminfo` (kB), in bytes.
fn meminfo() -> std::collections::HashMap<String, u64> {
    read("/proc/meminfo")
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            let n = if parts.next() == Some("kB") {
                n * 1024
            } else {
                n
            };
            Some((key.trim().to_owned(), n))
        })
        .collect()
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn memory() -> Value {
    let m = meminfo();
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    let total = get("MemTotal");
    let available = get("MemAvailable");
    let used = total.saturating_sub(available);
    json!({
        "total": total,
        "available": available,
        "used": used,
        "usedPercent": percent(used, total),
        "free": get("MemFree"),
        "active": get("Active"),
        "inactive": get("Inactive"),
        "wired": 0,
        "laundry": 0,
        "buffers": get("Buffers"),
        "cached": get("Cached"),
        "writeback": get("Writeback"),
        "dirty": get("Dirty"),
        "writebacktmp": get("WritebackTmp"),
        "shared": get("Shmem"),
        "slab": get("Slab"),
        "sreclaimable": get("SReclaimable"),
        "sunreclaim": get("SUnreclaim"),
        "pagetables": get("PageTables"),
        "swapcached": get("SwapCached"),
        "commitlimit": get("CommitLimit"),
        "committedas": get("Committed_AS"),
        "hightotal": get("HighTotal"),
        "highfree": get("HighFree"),
        "lowtotal": get("LowTotal"),
        "lowfree": get("LowFree"),
        "swaptotal": get("SwapTotal"),
        "swapfree": get("SwapFree"),
        "mapped": get("Mapped"),
        "vmalloctotal": get("VmallocTotal"),
        "vmallocused": get("VmallocUsed"),
        "vmallocchunk": get("VmallocChunk"),
        "hugepagestotal": get("HugePages_Total"),
        "hugepagesfree": get("HugePages_Free"),
        "hugepagesize": get("Hugepagesize"),
    })
}

/// One entry per processor of `/proc/cpuinfo`.
fn cpus() -> Value {
    let text = read("/proc/cpuinfo");
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let num = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cache_kb = field("cache size")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        out.push(json!({
            "cpu": num("processor"),
            "vendorId": field("vendor_id").unwrap_or_default(),
            "family": field("cpu family").unwrap_or_default(),
            "model": field("model").unwrap_or_default(),
            "stepping": num("stepping"),
            "physicalId": field("physical id").unwrap_or_default(),
            "coreId": field("core id").unwrap_or_default(),
            "cores": 1,
            "modelName": field("model name").unwrap_or_default(),
            "mhz": field("cpu MHz").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0),
            "cacheSize": cache_kb,
            "flags": field("flags").map(|f| f.split_whitespace().map(str::to_owned).collect::<Vec<_>>()).unwrap_or_default(),
            "microcode": field("microcode").unwrap_or_default(),
        }));
    }
    Value::Array(out)
}

/// The aggregate line of `/proc/stat`, in seconds (USER_HZ = 100).
fn cpu_times() -> Value {
    let text = read("/proc/stat");
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return json!([]);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse::<f64>().unwrap_or(0.0) / 100.0)
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    json!([{
        "cpu": "cpu-total",
        "user": at(0), "nice": at(1), "system": at(2), "idle": at(3), "iowait": at(4),
        "irq": at(5), "softirq": at(6), "steal": at(7), "guest": at(8), "guestNice": at(9),
    }])
}

/// The root file system.
fn disks() -> Value {
    #[cfg(unix)]
    {
        let Ok(s) = rustix::fs::statvfs("/") else {
            return json!([]);
        };
        let fstype = read("/proc/self/mounts")
            .lines()
            .rev()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let _dev = f.next()?;
                let mount = f.next()?;
                let kind = f.next()?;
                (mount == "/").then(|| kind.to_owned())
            })
            .next()
            .unwrap_or_default();
        let total = s.f_blocks.saturating_mul(s.f_frsize);
        let free = s.f_bavail.saturating_mul(s.f_frsize);
        let used = s
            .f_blocks
            .saturating_sub(s.f_bfree)
            .saturating_mul(s.f_frsize);
        let inodes_used = s.f_files.saturating_sub(s.f_ffree);
        json!([{
            "path": "/",
            "fstype": fstype,
            "total": total,
            "free": free,
            "used": used,
            "usedPercent": percent(used, used.saturating_add(free)),
            "inodesTotal": s.f_files,
            "inodesUsed": inodes_used,
            "inodesFree": s.f_ffree,
            "inodesUsedPercent": percent(inodes_used, s.f_files),
        }])
    }
    #[cfg(not(unix))]
    {
        json!([])
    }
}

fn host(now_unix: i64) -> Value {
    let uptime = trimmed("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |f| f as u64);
    let os_release = read("/etc/os-release");
    let release = |key: &str| {
        os_release.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim_matches('"').to_owned())
        })
    };
    let procs = std::fs::read_dir("/proc").map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    });
    json!({
        "hostname": trimmed("/proc/sys/kernel/hostname"),
        "uptime": uptime,
        "bootTime": u64::try_from(now_unix).unwrap_or(0).saturating_sub(uptime),
        "procs": procs,
        "os": std::env::consts::OS,
        "platform": release("ID").unwrap_or_default(),
        "platformFamily": release("ID_LIKE").unwrap_or_default(),
        "platformVersion": release("VERSION_ID").unwrap_or_default(),
        "kernelVersion": trimmed("/proc/sys/kernel/osrelease"),
        "kernelArch": std::env::consts::ARCH,
        "virtualizationSystem": "",
        "virtualizationRole": "",
        "hostid": trimmed("/etc/machine-id"),
    })
}

/// The `data` of `sys/host-info`.
pub(crate) fn host_info(now_unix: i64, timestamp: String) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("timestamp".to_owned(), json!(timestamp));
    out.insert("cpu".to_owned(), cpus());
    out.insert("cpu_times".to_owned(), cpu_times());
    out.insert("disk".to_owned(), disks());
    out.insert("host".to_owned(), host(now_unix));
    out.insert("memory".to_owned(), memory());
    out
}

/// This machine's name, for `sys/ha-status`.
pub fn hostname() -> String {
    trimmed("/proc/sys/kernel/hostname")
}
