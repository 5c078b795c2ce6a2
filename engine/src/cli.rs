//! The `forge` command line. Each subcommand is a thin layer over the library: load and plan the
//! pipeline (reporting every problem, exit code 2, nothing written), then run, inspect or clean
//! the store. Exit codes are in [`crate::exit`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use forge_cache::Store;
use forge_ops::{CancelToken, OpRegistry};

use crate::diag::did_you_mean;
use crate::events::{Emitter, Event, Stamped};
use crate::executor::{ApplyOptions, Executor, Local, PlannedStep, Status, apply, dry_run};
use crate::plan::Plan;
use crate::report::{Console, LogFormat, human_duration};

use crate::exit::{
    FAILED as EXIT_FAILED, INFRA as EXIT_INFRA, INTERRUPTED as EXIT_INTERRUPTED,
    INVALID as EXIT_INVALID,
};
use crate::load::load_plan;
use crate::lookup::{eprint_error, find_refs, store_error};

#[derive(Parser, Debug)]
#[command(
    name = "forge",
    version,
    about = "Build small language models from a declarative YAML pipeline"
)]
pub struct Cli {
    /// Store directory (artifacts, cache, run records).
    #[arg(long, global = true, env = "FORGE_STORE", default_value = ".forge")]
    pub store: PathBuf,
    /// Console output: human lines/bars on stderr, or one JSON event per line on stdout.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Show ops' log lines too.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pipeline: skip cached steps, run the rest, resume unfinished ones.
    Apply(ApplyArgs),
    /// Show what `apply` would do and why (same as `apply --dry-run`).
    Plan(PlanArgs),
    /// Each step's state in the store, and the last run.
    Status(PipelineArg),
    /// The numbers steps recorded, side by side: each step's latest result (a matrix step's
    /// instances as columns), its last N runs (`--runs N`), or two runs (`metrics diff A B`).
    Metrics(MetricsArgs),
    /// One run's numbers (every metric its steps logged, and the results of the steps it
    /// finished) written to DIR as TensorBoard event files, CSV or JSON lines.
    ExportMetrics {
        /// Run id as `forge status` and `runs/` show it (a unique prefix will do), or `latest`.
        run: String,
        dir: PathBuf,
        #[arg(long, short, value_enum, default_value = "tensorboard")]
        format: crate::metrics_export::ExportFormat,
    },
    /// Serve the store and pipeline over HTTP: REST, a WebSocket of live events, and start,
    /// pause and resume of `apply` (prints the address with its token).
    Serve(ServeArgs),
    /// The step graph: every step instance, grouped by phase, with an edge per input.
    Dag {
        pipeline: Option<PathBuf>,
        /// `text`, `dot` (Graphviz: `forge dag -f dot | dot -Tsvg > dag.svg`) or `mermaid`.
        #[arg(long, short, value_enum, default_value = "text")]
        format: crate::dag::DagFormat,
    },
    /// A step's latest result: key, outputs, metrics.
    Show {
        /// Step id (`phase.step`, `phase.step[axis=value]`, or a unique step name).
        step: String,
        /// Pipeline the step belongs to (needed only when several pipelines have this step).
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Copy a step's outputs out of the store into DIR (writable copies), or with `--format hf`
    /// write its model as a Hugging Face transformers directory.
    Export {
        step: String,
        dir: PathBuf,
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
        /// `files`: the outputs as stored; `hf`: the `model` output for
        /// `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`.
        #[arg(long, short, value_enum, default_value = "files")]
        format: ExportFormat,
    },
    /// Upload the results of a pipeline's steps built here (all, or the STEPs named) to the
    /// remote cache.
    Push {
        step: Vec<String>,
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download every result of a pipeline the remote cache has and this store lacks, so the
    /// next `apply` finds them cached.
    Pull {
        pipeline: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Re-hash every object in the store; quarantine corrupt ones so the next apply rebuilds them.
    Verify,
    /// Run one step of a job spec written by `apply --executor slurm` (what a cluster job runs).
    #[command(hide = true)]
    RunStep { spec: PathBuf },
    /// Delete results not referenced by the most recent runs of each pipeline.
    Gc {
        /// How many recent runs of each pipeline to keep alive.
        #[arg(long, default_value_t = 10)]
        keep_last: usize,
        /// Count the recent runs across all pipelines together, so a pipeline not run lately
        /// loses its results.
        #[arg(long)]
        all_pipelines: bool,
    },
    /// Evaluate a model on held-out data as it is deployed (ACT): perplexity with a 95%
    /// interval, answer accuracy by greedy decoding, halting.
    Eval(crate::eval::EvalArgs),
    /// Continue a prompt with a model the pipeline built (incremental decoding under ACT;
    /// thoughts hidden unless --show-thoughts).
    Generate(crate::generate::GenerateArgs),
    /// Convert another tool's config into a forge pipeline.
    Import {
        #[command(subcommand)]
        from: ImportCommand,
    },
    /// Print the pipeline JSON Schema.
    Schema,
    /// Print a shell completion script: `source <(forge completions bash)`, or save it where
    /// the shell looks (`forge completions zsh > ~/.zfunc/_forge`,
    /// `forge completions fish > ~/.config/fish/completions/forge.fish`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What `forge export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Files,
    Hf,
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// A mergekit YAML (`merge_method`, `models`/`slices`, `base_model`, `parameters`) as a
    /// pipeline with a `download` step per model and one `merge` step of the same arithmetic.
    /// Converts linear, slerp, task_arithmetic, ties, dare_linear and passthrough slices with
    /// one value per parameter; anything else is an error naming it.
    Mergekit {
        config: PathBuf,
        /// Write the pipeline here instead of to stdout (refused if it exists).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetricsArgs {
    #[command(subcommand)]
    pub diff: Option<MetricsCommand>,
    /// Pipeline file (default: ./forge.yaml).
    pub pipeline: Option<PathBuf>,
    /// The last N runs of the pipeline as columns instead of each step's latest result.
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    #[command(flatten)]
    pub show: MetricsShow,
}

#[derive(Subcommand, Debug)]
pub enum MetricsCommand {
    /// Two runs' numbers side by side with the change (run ids as `forge status` and
    /// `runs/` show them; a unique prefix will do).
    Diff {
        run_a: String,
        run_b: String,
        #[command(flatten)]
        show: MetricsShow,
    },
}

#[derive(Args, Debug, Clone)]
pub struct MetricsShow {
    /// Only steps whose id matches this glob (`cognate.*`, `*[variant=memory]`).
    #[arg(long, value_name = "GLOB")]
    pub steps: Option<String>,
    /// Only metrics whose name matches this glob (`val/*`, `*perplexity*`).
    #[arg(long, value_name = "GLOB")]
    pub names: Option<String>,
    #[arg(long, short, value_enum, default_value = "table")]
    pub format: crate::metrics::MetricsFormat,
}

#[derive(Args, Debug)]
pub struct PipelineArg {
    /// Pipeline file (default: ./forge.yaml).
    pub pipeline: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRunFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    pub pipeline: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also save the plan to PLANFILE: `forge apply PLANFILE` then runs exactly it, or refuses
    /// if anything it was computed from changed.
    #[arg(long, short, value_name = "PLANFILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub select: Selection,
    #[command(flatten)]
    pub vars: VarArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `--remote`: the remote cache shared with other machines.
#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Remote cache: on a local miss, download a step's result from it instead of building;
    /// upload what is built here. `s3://bucket/prefix` (with `AWS_ENDPOINT` for MinIO, R2…),
    /// `gs://…`, `az://…`, `file:///dir` or a directory. Credentials come from the services'
    /// usual environment variables.
    #[arg(long, env = "FORGE_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

/// `given` (the remote `--remote` or FORGE_REMOTE opened), else the pipeline's
/// `defaults.remote`, else none.
fn remote_for(
    given: Option<Arc<forge_cache::Remote>>,
    plan: &Plan,
) -> Result<Option<Arc<forge_cache::Remote>>, u8> {
    match (given, &plan.pipeline.defaults.remote) {
        (None, Some(url)) => RemoteArgs {
            remote: Some(url.clone()),
        }
        .open(),
        (given, _) => Ok(given),
    }
}

impl RemoteArgs {
    /// The remote for `plan`: `--remote` or FORGE_REMOTE, else the pipeline's
    /// `defaults.remote`, else none.
    fn open_for(&self, plan: &Plan) -> Result<Option<Arc<forge_cache::Remote>>, u8> {
        remote_for(self.open()?, plan)
    }

    /// Open the remote, if one is given; a URL that cannot be used is invalid input (exit 2).
    fn open(&self) -> Result<Option<Arc<forge_cache::Remote>>, u8> {
        let Some(url) = &self.remote else {
            return Ok(None);
        };
        forge_cache::Remote::open(url).map(|r| Some(Arc::new(r))).map_err(|e| {
            eprint_error(
                &e.to_string(),
                Some("give `--remote` (or FORGE_REMOTE) a URL such as s3://bucket/prefix, file:///dir or a directory"),
            );
            EXIT_INVALID
        })
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Pipeline file (default: ./forge.yaml).
    pub pipeline: Option<PathBuf>,
    /// Address to listen on. Anything but a loopback address requires the token for every
    /// request.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port (0: any free one; the address printed says which).
    #[arg(long, default_value_t = 8420)]
    pub port: u16,
    /// The token requests must carry (at least 16 characters); default: a random one, printed.
    #[arg(long, env = "FORGE_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub vars: VarArgs,
}

#[derive(Args, Debug, Clone, Default)]
pub struct VarArgs {
    /// Override a pipeline var (repeatable): `--var base_steps=300`. The value is read as YAML
    /// (`300`, `2.5e-4`, `'[0.9, 0.1]'`) and must have the type the pipeline gives the var.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<crate::vars::VarOverride>,
}

#[derive(Args, Debug, Clone)]
pub struct Selection {
    /// Re-run this step even if cached (repeatable).
    #[arg(long, value_name = "STEP")]
    pub force: Vec<String>,
    /// Run only this step and what it depends on (repeatable).
    #[arg(long, value_name = "STEP")]
    pub only: Vec<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    pub pipeline: Option<PathBuf>,
    /// Print the plan instead of running (`--dry-run=json` for JSON).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    pub dry_run: Option<DryRunFormat>,
    /// Re-plan and re-apply when the pipeline or a `file:` input changes.
    #[arg(long)]
    pub watch: bool,
    /// Steps running at once (CPU slots); default: number of cores. With `--executor slurm`:
    /// jobs in the cluster's queue at once (default 256).
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Where steps that miss the cache run: `local` (this process) or `slurm` (an `sbatch` job
    /// per step, against the same store); default: the pipeline's `defaults.executor`, else
    /// local.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// GPUs available to steps that ask for them.
    #[arg(long, default_value_t = 1)]
    pub gpus: u32,
    /// After a failure, still run everything not downstream of it.
    #[arg(long)]
    pub keep_going: bool,
    /// Give up waiting for a step locked by another process after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub lock_timeout: Duration,
    /// Warn when free disk on the store's filesystem falls below this (the seed's 10 GB).
    #[arg(long, value_parser = crate::hardware::parse_size, default_value = "10GB", value_name = "SIZE")]
    pub disk_warn: u64,
    /// Start no step that would leave less free disk than this (after 1.5 × what it will
    /// write), and stop running steps cleanly when free disk falls below it; `0` turns it off.
    #[arg(long, value_parser = crate::hardware::parse_size, default_value = "500MB", value_name = "SIZE")]
    pub disk_stop: u64,
    #[command(flatten)]
    pub select: Selection,
    #[command(flatten)]
    pub vars: VarArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Entry point for `forge` and for custom binaries that add their own ops.
pub fn main_with_registry(registry: OpRegistry) -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("FORGE_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    run(cli, registry)
}

pub fn run(cli: Cli, registry: OpRegistry) -> ExitCode {
    crate::load::diagnostics_as_json(cli.log_format == LogFormat::Json);
    let code = match &cli.command {
        Command::Apply(a) => cmd_apply(&cli, a, &registry),
        Command::Plan(p) => with_plan(&p.pipeline, &p.vars.vars, &registry, |plan| {
            let remote = p.remote.open_for(plan)?;
            let opts = selection(
                plan,
                &p.select,
                ApplyOptions {
                    remote,
                    ..ApplyOptions::default()
                },
            )?;
            let steps = planned_steps(&cli, plan, &opts)?;
            if let Some(out) = &p.out {
                save_plan(&cli, plan, &p.select, &p.vars.vars, &steps, out)?;
            }
            // Under `--log-format json` stdout carries JSON only: the plan as `--json` gives it.
            let json = p.json || cli.log_format == LogFormat::Json;
            print_steps(
                plan,
                &steps,
                if json {
                    DryRunFormat::Json
                } else {
                    DryRunFormat::Text
                },
            )
        }),
        Command::Status(p) => with_plan(&p.pipeline, &[], &registry, |plan| cmd_status(&cli, plan)),
        Command::Metrics(m) => cmd_metrics(&cli, m, &registry),
        Command::ExportMetrics { run, dir, format } => cmd_export_metrics(&cli, run, dir, *format),
        Command::Serve(s) => cmd_serve(&cli, s, &registry),
        Command::Dag { pipeline, format } => with_plan(pipeline, &[], &registry, |plan| {
            print!("{}", crate::dag::render(plan, *format));
            Ok(0)
        }),
        Command::Show {
            step,
            pipeline,
            json,
        } => cmd_show(&cli, step, pipeline.as_deref(), *json, &registry),
        Command::Export {
            step,
            dir,
            pipeline,
            format,
        } => cmd_export(&cli, step, dir, pipeline.as_deref(), *format, &registry),
        Command::Push {
            step,
            pipeline,
            remote,
        } => with_plan(pipeline, &[], &registry, |plan| {
            let remote = crate::sync::require(remote.open_for(plan)?, "push")?;
            let mut steps = vec![];
            for s in step {
                steps.extend(select_steps(plan, s, "step")?);
            }
            let store = Store::open(&cli.store).map_err(|e| store_error(&e))?;
            crate::sync::push(plan, &store, &remote, &steps)
        }),
        Command::Pull { pipeline, remote } => with_plan(pipeline, &[], &registry, |plan| {
            let remote = crate::sync::require(remote.open_for(plan)?, "pull")?;
            let store = Store::open(&cli.store).map_err(|e| store_error(&e))?;
            crate::sync::pull(plan, &store, remote)
        }),
        Command::Verify => cmd_verify(&cli),
        Command::RunStep { spec } => {
            crate::slurm::run_job(&cli.store, spec, &registry).map_err(|e| {
                eprint_error(&e, None);
                EXIT_INVALID
            })
        }
        Command::Gc {
            keep_last,
            all_pipelines,
        } => cmd_gc(&cli, *keep_last, *all_pipelines),
        Command::Eval(a) => crate::eval::run(&cli.store, a, &registry),
        Command::Generate(a) => crate::generate::run(&cli.store, a, &registry),
        Command::Import {
            from: ImportCommand::Mergekit { config, output },
        } => cmd_import_mergekit(config, output.as_deref()),
        Command::Schema => {
            print!("{}", crate::schema::pipeline_schema_text(&registry));
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "forge", &mut std::io::stdout());
            Ok(0)
        }
    };
    ExitCode::from(code.unwrap_or_else(|c| c))
}

type CmdResult = Result<u8, u8>;

fn cmd_import_mergekit(config: &Path, output: Option<&Path>) -> CmdResult {
    let imported = match crate::import::mergekit_file(config) {
        Ok(i) => i,
        Err(crate::import::ImportError::Unsupported { problems }) => {
            for p in &problems {
                eprint_error(&format!("{}: {p}", config.display()), None);
            }
            eprintln!(
                "hint: forge converts merge_method {} with one value per parameter (a number, not a per-layer list)",
                crate::import::SUPPORTED.join(", ")
            );
            return Err(EXIT_INVALID);
        }
        Err(e) => {
            eprint_error(&e.to_string(), None);
            return Err(EXIT_INVALID);
        }
    };
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    match output {
        None => print!("{}", imported.yaml),
        Some(out) => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .and_then(|mut f| std::io::Write::write_all(&mut f, imported.yaml.as_bytes()));
            if let Err(e) = written {
                eprint_error(&format!("writing `{}`: {e}", out.display()), None);
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    EXIT_INVALID
                } else {
                    EXIT_FAILED
                });
            }
            eprintln!(
                "Wrote {} (check it with `forge plan {}`)",
                out.display(),
                out.display()
            );
        }
    }
    Ok(0)
}

fn pipeline_path(p: &Option<PathBuf>) -> Result<PathBuf, u8> {
    match p {
        Some(p) => Ok(p.clone()),
        None if Path::new("forge.yaml").exists() => Ok("forge.yaml".into()),
        None => {
            eprint_error(
                "no pipeline given and ./forge.yaml does not exist",
                Some("pass a pipeline file, e.g. `forge apply pipelines/hello.yaml`"),
            );
            Err(EXIT_INVALID)
        }
    }
}

fn with_plan(
    p: &Option<PathBuf>,
    vars: &[crate::vars::VarOverride],
    registry: &OpRegistry,
    f: impl FnOnce(&Plan) -> CmdResult,
) -> CmdResult {
    let path = pipeline_path(p)?;
    let plan = load_plan(&path, vars, registry)?;
    f(&plan)
}

fn select_steps(plan: &Plan, sel: &str, flag: &str) -> Result<Vec<usize>, u8> {
    let found = plan.select(sel);
    if found.is_empty() {
        let ids: Vec<String> = plan.steps.iter().map(|s| s.id.clone()).collect();
        let hint = did_you_mean(sel, ids.iter().map(String::as_str))
            .unwrap_or_else(|| format!("steps: {}", ids.join(", ")));
        eprint_error(
            &format!("{flag} `{sel}` matches no step of `{}`", plan.pipeline.name),
            Some(&hint),
        );
        return Err(EXIT_INVALID);
    }
    Ok(found)
}

fn selection(plan: &Plan, sel: &Selection, mut opts: ApplyOptions) -> Result<ApplyOptions, u8> {
    for f in &sel.force {
        opts.force.extend(select_steps(plan, f, "--force")?);
    }
    if !sel.only.is_empty() {
        let mut roots = Vec::new();
        for o in &sel.only {
            roots.extend(select_steps(plan, o, "--only")?);
        }
        opts.only = Some(plan.with_ancestors(&roots));
    }
    Ok(opts)
}

/// Open the store if it exists, else a throwaway one (a plan must not create `.forge`).
fn store_for_reading(root: &Path) -> Result<(Store, Option<tempfile::TempDir>), u8> {
    match Store::open_existing(root) {
        Ok(Some(s)) => Ok((s, None)),
        Ok(None) => {
            let tmp = tempfile::tempdir().map_err(|e| {
                eprint_error(&format!("creating a temporary directory: {e}"), None);
                EXIT_FAILED
            })?;
            let s = Store::open(tmp.path().join("store")).map_err(|e| store_error(&e))?;
            Ok((s, Some(tmp)))
        }
        Err(e) => Err(store_error(&e)),
    }
}

/// What `apply` would do with each step of `plan` against the store.
fn planned_steps(cli: &Cli, plan: &Plan, opts: &ApplyOptions) -> Result<Vec<PlannedStep>, u8> {
    let (store, _tmp) = store_for_reading(&cli.store)?;
    dry_run(plan, &store, opts).map_err(|e| {
        eprint_error(&e.to_string(), None);
        EXIT_FAILED
    })
}

fn print_plan(cli: &Cli, plan: &Plan, opts: &ApplyOptions, format: DryRunFormat) -> CmdResult {
    let steps = planned_steps(cli, plan, opts)?;
    print_steps(plan, &steps, format)
}

fn print_steps(plan: &Plan, steps: &[PlannedStep], format: DryRunFormat) -> CmdResult {
    let mut out = std::io::stdout().lock();
    if format == DryRunFormat::Json {
        let doc = serde_json::json!({ "pipeline": plan.pipeline.name, "steps": steps });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(0);
    }
    let _ = out.write_all(plan_text(plan, steps).as_bytes());
    Ok(0)
}

/// `forge plan -o FILE`.
fn save_plan(
    cli: &Cli,
    plan: &Plan,
    select: &Selection,
    vars: &[crate::vars::VarOverride],
    steps: &[PlannedStep],
    out: &Path,
) -> Result<(), u8> {
    let saved = crate::saved_plan::SavedPlan::new(
        &plan.pipeline.path,
        &cli.store,
        &select.force,
        &select.only,
        vars,
        steps,
    )
    .and_then(|s| std::fs::write(out, serde_json::to_string_pretty(&s).expect("json") + "\n"));
    saved.map_err(|e| {
        eprint_error(
            &format!("writing the plan to `{}`: {e}", out.display()),
            None,
        );
        EXIT_FAILED
    })?;
    eprintln!(
        "Saved the plan to {}; `forge apply {}` runs exactly it",
        out.display(),
        out.display()
    );
    Ok(())
}

pub fn plan_text(plan: &Plan, steps: &[PlannedStep]) -> String {
    let cached = steps.iter().filter(|s| s.status == "cached").count();
    let remote = steps.iter().filter(|s| s.status == "remote").count();
    let from_remote = if remote > 0 {
        format!(", {remote} from the remote cache")
    } else {
        String::new()
    };
    let mut s = format!(
        "Plan for {} ({} step{}: {cached} cached{from_remote}, {} to run)\n",
        plan.pipeline.name,
        steps.len(),
        if steps.len() == 1 { "" } else { "s" },
        steps.len() - cached - remote
    );
    let w = steps.iter().map(|x| x.id.len()).max().unwrap_or(0);
    for p in steps {
        let key = p.key.as_deref().map(|k| &k[..12]).unwrap_or("(pending)");
        if p.changes.len() > 1 {
            s.push_str(&format!(
                "  {:<6}  {:<w$}  {key:<12}  changed:\n",
                p.status, p.id
            ));
            for c in &p.changes {
                s.push_str(&format!("  {:<6}  {:<w$}  {:<12}    {c}\n", "", "", ""));
            }
        } else {
            s.push_str(&format!(
                "  {:<6}  {:<w$}  {key:<12}  {}\n",
                p.status, p.id, p.reason
            ));
        }
    }
    s
}

fn cmd_status(cli: &Cli, plan: &Plan) -> CmdResult {
    print_plan(cli, plan, &ApplyOptions::default(), DryRunFormat::Text)?;
    if let Ok(Some(store)) = Store::open_existing(&cli.store) {
        let runs = store.runs().unwrap_or_default();
        if let Some(last) = runs.iter().rev().find(|r| r.pipeline == plan.pipeline.name) {
            let when = std::time::UNIX_EPOCH + Duration::from_millis(last.started_unix_ms);
            let count = |s: &str| last.steps.iter().filter(|x| x.status == s).count();
            println!(
                "\nLast run {} at {}: {} ({} ran, {} cached, {} failed)",
                last.id,
                humantime::format_rfc3339_seconds(when),
                last.status,
                count("ran"),
                count("cached"),
                count("failed")
            );
        } else {
            println!(
                "\nNo runs of `{}` in {}",
                plan.pipeline.name,
                cli.store.display()
            );
        }
    }
    Ok(0)
}

fn cmd_apply(cli: &Cli, a: &ApplyArgs, registry: &OpRegistry) -> CmdResult {
    let path = pipeline_path(&a.pipeline)?;
    // `forge apply PLANFILE`: the saved plan's pipeline and selection, if it is still current.
    let saved = crate::saved_plan::SavedPlan::read(&path)
        .transpose()
        .map_err(|m| {
            eprint_error(&m, None);
            EXIT_INVALID
        })?;
    let (path, select, vars) = match &saved {
        None => (path, a.select.clone(), a.vars.clone()),
        Some(_)
            if a.watch
                || !a.select.force.is_empty()
                || !a.select.only.is_empty()
                || !a.vars.vars.is_empty() =>
        {
            eprint_error(
                "a saved plan fixes what runs: --watch, --force, --only and --var cannot change it",
                Some(
                    "make a new plan with those options: `forge plan -o PLANFILE --var NAME=VALUE`",
                ),
            );
            return Err(EXIT_INVALID);
        }
        Some(s) => (
            s.pipeline.clone(),
            Selection {
                force: s.force.clone(),
                only: s.only.clone(),
            },
            VarArgs {
                vars: s.vars.clone(),
            },
        ),
    };
    let a = &ApplyArgs {
        select,
        vars,
        ..a.clone()
    };
    let vars = a.vars.vars.as_slice();
    // A saved plan's pipeline is planned once: to check the plan is current, then to run it.
    let mut checked: Option<Plan> = None;
    // Opened once, now, so a bad URL is refused before anything runs.
    let given_remote = a.remote.open()?;
    if let Some(saved) = &saved {
        let plan = load_plan(&path, vars, registry)?;
        let opts = selection(
            &plan,
            &a.select,
            ApplyOptions {
                remote: remote_for(given_remote.clone(), &plan)?,
                ..ApplyOptions::default()
            },
        )?;
        let now = planned_steps(cli, &plan, &opts)?;
        if let Some(why) = saved.stale_because(&cli.store, &now) {
            eprint_error(
                &format!("the saved plan is stale: {why}; nothing was run"),
                Some("make a new plan (`forge plan -o PLANFILE`), review it and apply that"),
            );
            return Err(EXIT_INVALID);
        }
        checked = Some(plan);
    }
    let mut plan_once = || match checked.take() {
        Some(plan) => Ok(plan),
        None => load_plan(&path, vars, registry),
    };
    if let Some(format) = a.dry_run {
        let plan = plan_once()?;
        let opts = selection(
            &plan,
            &a.select,
            ApplyOptions {
                remote: remote_for(given_remote.clone(), &plan)?,
                ..ApplyOptions::default()
            },
        )?;
        return print_plan(cli, &plan, &opts, format);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .max_blocking_threads(512)
        .build()
        .map_err(|e| {
            eprint_error(&format!("starting the runtime: {e}"), None);
            EXIT_FAILED
        })?;
    // Ctrl-C: the first cancels the current apply cleanly, the second exits at once.
    let current: Arc<Mutex<CancelToken>> = Arc::new(Mutex::new(CancelToken::new()));
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let current = current.clone();
        let interrupted = interrupted.clone();
        rt.spawn(async move {
            let mut n = 0;
            while tokio::signal::ctrl_c().await.is_ok() {
                n += 1;
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                if n >= 2 {
                    eprintln!("\nerror: interrupted twice; exiting without waiting for steps to stop");
                    std::process::exit(EXIT_INTERRUPTED as i32);
                }
                eprintln!("\nInterrupted: stopping running steps (they keep their checkpoints); Ctrl-C again to exit now");
                current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).cancel("interrupted (Ctrl-C)");
            }
        });
    }
    let once = |plan: Plan| -> CmdResult {
        let executor = executor_for(cli, a, &plan, &path)?;
        let remote = remote_for(given_remote.clone(), &plan)?;
        let default_jobs = if executor.local_resources() {
            ApplyOptions::default().jobs
        } else {
            SLURM_DEFAULT_JOBS
        };
        let opts = selection(
            &plan,
            &a.select,
            ApplyOptions {
                executor,
                jobs: a.jobs.unwrap_or(default_jobs),
                gpus: a.gpus,
                keep_going: a.keep_going,
                lock_timeout: a.lock_timeout,
                retry_base: retry_base(),
                disk_warn: a.disk_warn,
                disk_stop: a.disk_stop,
                remote: remote.clone(),
                ..ApplyOptions::default()
            },
        )?;
        let token = CancelToken::new();
        *current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token.clone();
        let code = run_apply(cli, plan, opts, token, &rt);
        // The remote's client owns a runtime: dropped here, outside the apply's async context.
        drop(remote);
        code
    };
    if !a.watch {
        let plan = plan_once()?;
        let code = once(plan)?;
        return if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            Err(EXIT_INTERRUPTED)
        } else {
            Ok(code)
        };
    }
    crate::watch::watch(&path, vars, registry, &interrupted, |plan| {
        once(plan).unwrap_or_else(|c| c)
    })
}

/// Jobs in the cluster's queue at once under `--executor slurm`, unless `--jobs` says.
const SLURM_DEFAULT_JOBS: usize = 256;

/// The executor: `--executor`, else the pipeline's `defaults.executor`, else local. Slurm needs
/// `sbatch` here (exit 2 without it).
fn executor_for(
    cli: &Cli,
    a: &ApplyArgs,
    plan: &Plan,
    path: &Path,
) -> Result<Arc<dyn Executor>, u8> {
    let slurm = match a.executor {
        Some(e) => e == ExecutorArg::Slurm,
        None => plan.pipeline.defaults.executor.as_deref() == Some("slurm"),
    };
    if !slurm {
        return Ok(Arc::new(Local));
    }
    crate::slurm::Slurm::new(&cli.store, path, a.vars.vars.clone())
        .map(|s| Arc::new(s) as Arc<dyn Executor>)
        .map_err(|(msg, hint)| {
            eprint_error(&msg, Some(&hint));
            EXIT_INVALID
        })
}

fn cmd_serve(cli: &Cli, s: &ServeArgs, registry: &OpRegistry) -> CmdResult {
    let path = pipeline_path(&s.pipeline)?;
    // Checked once now, so a typo is an exit-2 error rather than a page of 422s.
    load_plan(&path, &s.vars.vars, registry)?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    crate::serve::serve(
        crate::serve::Options {
            store: absolute(&cli.store),
            pipeline: absolute(&path),
            vars: s.vars.vars.clone(),
            host: s.host,
            port: s.port,
            token: s.token.clone(),
        },
        registry.clone(),
    )
    .map(|()| 0)
    .map_err(|e| {
        eprint_error(&e, None);
        EXIT_INFRA
    })
}

fn cmd_export_metrics(
    cli: &Cli,
    run: &str,
    dir: &Path,
    format: crate::metrics_export::ExportFormat,
) -> CmdResult {
    let Some(store) = Store::open_existing(&cli.store).map_err(|e| store_error(&e))? else {
        eprint_error(
            &format!("no store at `{}`", cli.store.display()),
            Some("run `forge apply` first, or pass --store"),
        );
        return Err(EXIT_INVALID);
    };
    let found = if run == "latest" {
        let runs = store.runs().map_err(|e| store_error(&e))?;
        runs.into_iter()
            .last()
            .ok_or_else(|| "the store has no runs yet".to_string())
    } else {
        crate::metrics::find_run(&store, run).map_err(|e| store_error(&e))?
    };
    let summary = found.map_err(|msg| {
        eprint_error(&msg, Some("`forge status` names the last run"));
        EXIT_INVALID
    })?;
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        eprint_error(
            &format!(
                "`{}` exists and is not empty; nothing was written",
                dir.display()
            ),
            Some("export into a new or empty directory"),
        );
        return Err(EXIT_INVALID);
    }
    let run_dir = store.root().join("runs").join(&summary.id);
    let (points, steps) =
        crate::metrics_export::export(&store, &run_dir, format, dir).map_err(|e| {
            eprint_error(&format!("exporting run {}: {e}", summary.id), None);
            EXIT_FAILED
        })?;
    eprintln!(
        "Wrote {points} number{} of {steps} step{} from run {} to {}",
        if points == 1 { "" } else { "s" },
        if steps == 1 { "" } else { "s" },
        summary.id,
        dir.display()
    );
    Ok(0)
}

/// How often `apply` samples the machine (`FORGE_HARDWARE_INTERVAL_MS`, default 10 s).
fn hardware_interval() -> Duration {
    std::env::var("FORGE_HARDWARE_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

fn retry_base() -> Duration {
    std::env::var("FORGE_RETRY_BASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(1))
}

fn run_apply(
    cli: &Cli,
    plan: Plan,
    opts: ApplyOptions,
    token: CancelToken,
    rt: &tokio::runtime::Runtime,
) -> CmdResult {
    let store = Store::open(&cli.store).map_err(|e| store_error(&e))?;
    let _store_lock = store.lock_store(false).map_err(|e| store_error(&e))?;
    let mut run = store.new_run().map_err(|e| store_error(&e))?;
    let events_path = run.dir().join("events.jsonl");
    let mut events_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&events_path)
        .map_err(|e| {
            eprint_error(&format!("opening `{}`: {e}", events_path.display()), None);
            EXIT_FAILED
        })?;
    let (tx, rx) = std::sync::mpsc::channel::<Stamped>();
    let emitter = Emitter::new(tx);
    let mut console = Console::new(cli.log_format, cli.verbose);
    // Every metric also goes to TensorBoard event files beside the run's events.
    let mut board = Some(crate::tensorboard::Board::new(
        run.dir().join("tensorboard"),
    ));
    let board_store = store.clone();
    let reporter = std::thread::spawn(move || {
        let results_of = crate::metrics_export::results_in(&board_store);
        for ev in rx {
            if let Ok(line) = serde_json::to_string(&ev) {
                let _ = events_file.write_all(line.as_bytes());
                let _ = events_file.write_all(b"\n");
                let _ = events_file.flush();
            }
            if let Some(b) = &mut board
                && matches!(ev.event, Event::Metric { .. } | Event::Finished { .. })
                && let Err(e) = serde_json::to_value(&ev)
                    .map_err(std::io::Error::other)
                    .and_then(|v| b.event(&v, &results_of))
                    .and_then(|()| b.flush())
            {
                // The run goes on: its events and results do not depend on these files.
                board = None;
                console.handle(&Stamped {
                    event: Event::Warning {
                        message: format!("writing TensorBoard files stopped: {e}"),
                    },
                    ..ev.clone()
                });
            }
            console.handle(&ev);
        }
    });
    // The machine every 10 s as `hardware` events; below --disk-stop, a clean stop.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let disk_stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (emitter, token) = (emitter.clone(), token.clone());
        let (sampling, disk_stopped) = (sampling.clone(), disk_stopped.clone());
        let (root, stop, warn) = (store.root().to_owned(), opts.disk_stop, opts.disk_warn);
        std::thread::spawn(move || {
            let mut hw = crate::hardware::Sampler::new(&root);
            let mut warned = false;
            let interval = hardware_interval();
            loop {
                let sample = hw.sample();
                if let Some(d) = &sample.disk {
                    let free = crate::hardware::human_bytes(d.available_bytes);
                    if d.available_bytes < stop && !token.is_cancelled() {
                        disk_stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                        let why = format!(
                            "only {free} free on the store's filesystem (--disk-stop {}): stopping; running steps keep their checkpoints",
                            crate::hardware::human_bytes(stop)
                        );
                        emitter.emit(Event::Warning {
                            message: why.clone(),
                        });
                        token.cancel(why);
                    } else if d.available_bytes < warn && !warned {
                        warned = true;
                        emitter.emit(Event::Warning {
                            message: format!(
                                "only {free} free on the store's filesystem (below --disk-warn {})",
                                crate::hardware::human_bytes(warn)
                            ),
                        });
                    }
                }
                emitter.emit(Event::Hardware(sample));
                let t = std::time::Instant::now();
                while t.elapsed() < interval {
                    if !sampling.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let plan = Arc::new(plan);
    let report = rt.block_on(apply(
        plan.clone(),
        store,
        opts,
        emitter,
        token.clone(),
        &mut run,
    ));
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = sampler.join();
    let _ = reporter.join();
    if disk_stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(EXIT_INFRA);
    }
    if report.results.iter().any(|r| r.status == Status::Failed) {
        return Err(crate::exit::for_failures(
            report.results.iter().filter_map(|r| r.tier),
        ));
    }
    if token.is_cancelled() {
        return Err(EXIT_INTERRUPTED);
    }
    Ok(0)
}

fn cmd_show(
    cli: &Cli,
    sel: &str,
    pipeline: Option<&Path>,
    json: bool,
    registry: &OpRegistry,
) -> CmdResult {
    let (store, refs) = find_refs(&cli.store, sel, pipeline, registry)?;
    let mut docs = Vec::new();
    for r in &refs {
        if let Some(doc) = crate::lookup::step_doc(&store, r).map_err(|e| store_error(&e))? {
            docs.push(doc);
        }
    }
    if json {
        let v = if docs.len() == 1 {
            docs.pop().expect("one")
        } else {
            serde_json::Value::Array(docs)
        };
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(0);
    }
    for d in &docs {
        let when = std::time::UNIX_EPOCH
            + Duration::from_millis(d["created_unix_ms"].as_u64().unwrap_or(0));
        println!(
            "{} (pipeline {}, op {})",
            d["step"].as_str().unwrap_or(""),
            d["pipeline"].as_str().unwrap_or(""),
            d["op"].as_str().unwrap_or("")
        );
        println!("  key      {}", d["key"].as_str().unwrap_or(""));
        println!(
            "  created  {} in run {}, took {}",
            humantime::format_rfc3339_seconds(when),
            d["run_id"].as_str().unwrap_or(""),
            human_duration(d["duration_ms"].as_u64().unwrap_or(0))
        );
        if d["intact"] == false {
            println!(
                "  WARNING  some outputs are missing or quarantined; the next apply rebuilds them"
            );
        }
        println!("  outputs");
        for (name, o) in d["outputs"].as_object().into_iter().flatten() {
            println!(
                "    {name}  {}  {} files, {} bytes  {}",
                &o["digest"].as_str().unwrap_or("")[..12],
                o["files"],
                o["bytes"],
                o["path"].as_str().unwrap_or("")
            );
        }
        let metrics = d["metrics"].as_object().cloned().unwrap_or_default();
        if !metrics.is_empty() {
            println!("  metrics");
            for (k, v) in metrics {
                println!("    {k} = {v}");
            }
        }
    }
    Ok(0)
}

fn cmd_export(
    cli: &Cli,
    sel: &str,
    dir: &Path,
    pipeline: Option<&Path>,
    format: ExportFormat,
    registry: &OpRegistry,
) -> CmdResult {
    let (store, refs) = find_refs(&cli.store, sel, pipeline, registry)?;
    let several = refs.len() > 1;
    for r in &refs {
        let Some(rec) = store.get_action(&r.key).map_err(|e| store_error(&e))? else {
            eprint_error(
                &format!("the result of `{}` is incomplete in the store", r.step),
                Some("run `forge apply` to rebuild it"),
            );
            return Err(EXIT_FAILED);
        };
        if format == ExportFormat::Hf {
            let dest = if several {
                dir.join(&r.step)
            } else {
                dir.to_owned()
            };
            export_hf(&store, &r.step, &rec.outputs, &dest)?;
            continue;
        }
        for (name, d) in &rec.outputs {
            let dest = if several {
                dir.join(&r.step).join(name)
            } else {
                dir.join(name)
            };
            store.export(d, &dest).map_err(|e| store_error(&e))?;
            eprintln!(
                "{:>12} {} `{name}` to {}",
                "Exported",
                r.step,
                dest.display()
            );
        }
    }
    Ok(0)
}

/// `forge export --format hf`: the step's `model` output as a Hugging Face directory.
fn export_hf(
    store: &Store,
    step: &str,
    outputs: &std::collections::BTreeMap<String, forge_cache::ObjectDigest>,
    dest: &Path,
) -> Result<(), u8> {
    let Some(model) = outputs.get("model") else {
        eprint_error(
            &format!("`{step}` has no `model` output to export for Hugging Face"),
            Some("export a step of `train`, `merge`, `bake` or `quantize`"),
        );
        return Err(EXIT_INVALID);
    };
    if dest.join("config.json").exists() {
        eprint_error(
            &format!("`{}` already holds a model", dest.display()),
            Some("export into a new or empty directory"),
        );
        return Err(EXIT_INVALID);
    }
    std::fs::create_dir_all(dest).map_err(|e| {
        eprint_error(&format!("creating `{}`: {e}", dest.display()), None);
        EXIT_INFRA
    })?;
    // The store's read-only view of the model: read in place, not copied first.
    let files = store.checkout(model).map_err(|e| store_error(&e))?;
    let done = forge_ops::model::hf::export(&files, dest).map_err(|e| {
        eprint_error(&e.to_string(), None);
        EXIT_FAILED
    })?;
    eprintln!(
        "{:>12} {step} as a Hugging Face model ({} tensors{}) to {}",
        "Exported",
        done.tensors,
        if done.dequantized {
            ", dequantized"
        } else {
            ""
        },
        dest.display()
    );
    if !done.skipped.is_empty() {
        eprintln!(
            "        note: left out {} (Quiet-STaR's mixing head)",
            done.skipped.join(", ")
        );
    }
    Ok(())
}

fn cmd_verify(cli: &Cli) -> CmdResult {
    let Some(store) = Store::open_existing(&cli.store).map_err(|e| store_error(&e))? else {
        eprintln!("No store at `{}`; nothing to verify", cli.store.display());
        return Ok(0);
    };
    let r = store.verify(&mut |_, _| {}).map_err(|e| store_error(&e))?;
    if cli.log_format == LogFormat::Json {
        println!("{}", serde_json::to_string(&r).expect("json"));
    }
    for c in &r.corrupt {
        eprintln!(
            "{:>12} object {} (content hashes to {}); moved to {}",
            "Corrupt",
            c.digest,
            c.actual
                .map(|a| a.to_hex())
                .unwrap_or_else(|| "(unreadable)".into()),
            c.quarantined_to.display()
        );
    }
    let mib = r.bytes_checked as f64 / (1u64 << 20) as f64;
    if r.corrupt.is_empty() {
        eprintln!(
            "{:>12} {} objects ({mib:.1} MiB): all intact",
            "Verified", r.objects_checked
        );
        Ok(0)
    } else {
        eprintln!(
            "{:>12} {} objects ({mib:.1} MiB): {} corrupt, quarantined; {} results will be rebuilt by the next apply",
            "Verified",
            r.objects_checked,
            r.corrupt.len(),
            r.actions_invalidated
        );
        Err(EXIT_FAILED)
    }
}

fn cmd_metrics(cli: &Cli, m: &MetricsArgs, registry: &OpRegistry) -> CmdResult {
    let show = match &m.diff {
        Some(MetricsCommand::Diff { show, .. }) => show,
        None => &m.show,
    };
    let filter = crate::metrics::Filter::new(show.steps.as_deref(), show.names.as_deref())
        .map_err(|e| {
            eprint_error(
                &e,
                Some("a glob: `*` any text, `?` one character, `[ab]` a set"),
            );
            EXIT_INVALID
        })?;
    let Some(store) = Store::open_existing(&cli.store).map_err(|e| store_error(&e))? else {
        eprint_error(
            &format!("no store at `{}`", cli.store.display()),
            Some("run `forge apply <pipeline>` first"),
        );
        return Err(EXIT_FAILED);
    };
    let (cells, change) = match &m.diff {
        Some(MetricsCommand::Diff { run_a, run_b, .. }) => {
            let find = |id: &str| {
                crate::metrics::find_run(&store, id)
                    .map_err(|e| store_error(&e))?
                    .map_err(|msg| {
                        eprint_error(&msg, Some("`forge status` names the last run"));
                        EXIT_INVALID
                    })
            };
            let (a, b) = (find(run_a)?, find(run_b)?);
            (crate::metrics::diff(&store, &a, &b, &filter), true)
        }
        None => {
            let path = pipeline_path(&m.pipeline)?;
            let plan = load_plan(&path, &[], registry)?;
            let cells = match m.runs {
                Some(n) => crate::metrics::across_runs(&store, &plan, n, &filter),
                None => crate::metrics::latest(&store, &plan, &filter),
            };
            (cells, false)
        }
    };
    let cells = cells.map_err(|e| store_error(&e))?;
    print!("{}", crate::metrics::render(&cells, show.format, change));
    Ok(0)
}

fn cmd_gc(cli: &Cli, keep_last: usize, all_pipelines: bool) -> CmdResult {
    let Some(store) = Store::open_existing(&cli.store).map_err(|e| store_error(&e))? else {
        eprintln!("No store at `{}`; nothing to collect", cli.store.display());
        return Ok(0);
    };
    let r = store
        .gc(keep_last, all_pipelines)
        .map_err(|e| store_error(&e))?;
    if cli.log_format == LogFormat::Json {
        println!("{}", serde_json::to_string(&r).expect("json"));
    }
    eprintln!(
        "{:>12} kept {} runs; removed {} runs, {} results, {} objects ({:.1} MiB), {} work dirs, {} views",
        "Collected",
        r.runs_kept,
        r.runs_removed,
        r.actions_removed,
        r.objects_removed,
        r.bytes_freed as f64 / (1u64 << 20) as f64,
        r.work_dirs_removed,
        r.views_removed
    );
    Ok(0)
}
