//! `process.*`: the busiest processes and one process in detail.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::host::{memory, os, process};

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Highest CPU use over the sample window first.
    #[default]
    Cpu,
    /// Largest resident memory first.
    Memory,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArguments {
    /// `cpu` (default) or `memory`.
    #[serde(default)]
    pub sort_by: SortBy,
    /// How many processes to return, 1 to 100 (default 10).
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub limit: usize,
    /// Milliseconds over which CPU use is measured, 0 to 5000 (default 200); 0 gives the
    /// average since each process started.
    #[serde(default = "default_sample_ms")]
    #[schemars(range(min = 0, max = 5000))]
    pub sample_ms: u64,
}

fn default_limit() -> usize {
    10
}
fn default_sample_ms() -> u64 {
    200
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProcessSummary {
    pub pid: u32,
    pub name: String,
    pub user: Option<String>,
    /// CPU use over the sample window, as a share of one CPU (may pass 100 on several).
    pub cpu_percent: f64,
    /// Resident memory as a share of total memory.
    pub memory_percent: f64,
    pub rss_bytes: u64,
    /// Kernel state letter: R running, S sleeping, D disk wait, Z zombie, ...
    pub state: String,
    /// Command line, cut to 256 characters.
    pub command: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessSummary>,
    /// How many processes exist in all.
    pub total_processes: usize,
    pub sample_ms: u64,
}

pub struct List;

impl Tool for List {
    type Input = ListArguments;
    type Output = ProcessList;
    // Its sampling window waits on the workers; its scans go to the blocking pool.
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "process.list",
        "Top processes",
        "The processes using the most CPU (measured over a short window) or memory, with user, state, resident memory and command line.",
    ) };

    async fn call(cx: Cx, args: ListArguments) -> Result<ProcessList, ToolError> {
        if !(1..=100).contains(&args.limit) {
            return Err(ToolError::invalid_argument(format!("argument `limit`: {} is outside 1 to 100", args.limit)));
        }
        if args.sample_ms > 5000 {
            return Err(ToolError::invalid_argument(format!(
                "argument `sample_ms`: {} is more than 5000",
                args.sample_ms
            )));
        }
        let roots = cx.app.roots.clone();
        // The scans go to the blocking pool; the sampling window waits on the workers.
        let scan = || {
            let roots = roots.clone();
            super::off_worker(move || process::list_processes(&roots).map_err(ToolError::from))
        };
        let first = if args.sample_ms > 0 { scan().await? } else { Vec::new() };
        let started = Instant::now();
        if args.sample_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.sample_ms)).await;
            cx.progress.report(1.0, Some(1.0), "sampled processes");
        }
        let (now, total_memory, uptime) = {
            let roots = roots.clone();
            super::off_worker(move || {
                let now = process::list_processes(&roots)?;
                let total_memory = memory::read_memory(&roots)?.total_bytes.max(1) as f64;
                Ok((now, total_memory, os::read_uptime_seconds(&roots)?))
            })
            .await?
        };
        let elapsed = started.elapsed().as_secs_f64();
        let ticks = process::clock_ticks_per_second() as f64;
        let before: HashMap<u32, u64> = first.iter().map(|p| (p.pid, p.cpu_ticks)).collect();
        let mut rows: Vec<ProcessSummary> = now
            .iter()
            .map(|p| {
                let cpu_percent = if args.sample_ms > 0 {
                    let delta = p.cpu_ticks.saturating_sub(before.get(&p.pid).copied().unwrap_or(p.cpu_ticks));
                    delta as f64 / ticks / elapsed.max(0.001) * 100.0
                } else {
                    lifetime_cpu_percent(p, ticks, uptime)
                };
                summarize(p, cpu_percent, total_memory)
            })
            .collect();
        match args.sort_by {
            SortBy::Cpu => {
                rows.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent).then(b.rss_bytes.cmp(&a.rss_bytes)))
            }
            SortBy::Memory => rows.sort_by_key(|r| std::cmp::Reverse(r.rss_bytes)),
        }
        let total_processes = rows.len();
        rows.truncate(args.limit);
        Ok(ProcessList { processes: rows, total_processes, sample_ms: args.sample_ms })
    }
}

fn lifetime_cpu_percent(p: &process::ProcSample, ticks: f64, uptime: f64) -> f64 {
    let age = uptime - p.start_ticks as f64 / ticks;
    if age <= 0.0 {
        0.0
    } else {
        p.cpu_ticks as f64 / ticks / age * 100.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn summarize(p: &process::ProcSample, cpu_percent: f64, total_memory: f64) -> ProcessSummary {
    let mut command = if p.cmdline.is_empty() { format!("[{}]", p.name) } else { p.cmdline.join(" ") };
    if command.chars().count() > 256 {
        command = command.chars().take(255).collect::<String>() + "…";
    }
    ProcessSummary {
        pid: p.pid,
        name: p.name.clone(),
        user: p.user.clone(),
        cpu_percent: round1(cpu_percent),
        memory_percent: round1(p.rss_bytes as f64 / total_memory * 100.0),
        rss_bytes: p.rss_bytes,
        state: p.state.clone(),
        command,
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetInfoArguments {
    /// Process id, as listed by process.list.
    pub pid: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProcessDetail {
    #[serde(flatten)]
    pub process: process::ProcSample,
    /// Average CPU use since the process started, as a share of one CPU.
    pub cpu_percent_lifetime: f64,
    pub memory_percent: f64,
    /// Seconds since the process started.
    pub age_seconds: f64,
}

pub struct GetInfo;

impl Tool for GetInfo {
    type Input = GetInfoArguments;
    type Output = ProcessDetail;
    const SPEC: ToolSpec = read_only_spec(
        "process.get_info",
        "Process details",
        "One process by pid: name, state, parent, user, full command line, threads, resident and virtual memory, CPU time and age.",
    );

    async fn call(cx: Cx, args: GetInfoArguments) -> Result<ProcessDetail, ToolError> {
        detail(&cx, args.pid)
    }
}

/// The `process.get_info` result, shared with the `raspi://process/{pid}` resource.
pub fn detail(cx: &Cx, pid: u32) -> Result<ProcessDetail, ToolError> {
    let roots = &cx.app.roots;
    let p = process::read_process(roots, pid).map_err(|e| match e {
        crate::host::HostError::NotFound { .. } => ToolError::not_found(format!(
            "no process with pid {pid}; it may have exited. Call process.list to see running processes."
        )),
        other => other.into(),
    })?;
    let ticks = process::clock_ticks_per_second() as f64;
    let uptime = os::read_uptime_seconds(roots)?;
    let total_memory = memory::read_memory(roots)?.total_bytes.max(1) as f64;
    Ok(ProcessDetail {
        cpu_percent_lifetime: round1(lifetime_cpu_percent(&p, ticks, uptime)),
        memory_percent: round1(p.rss_bytes as f64 / total_memory * 100.0),
        age_seconds: (uptime - p.start_ticks as f64 / ticks).max(0.0),
        process: p,
    })
}
