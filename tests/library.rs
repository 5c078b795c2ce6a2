//! The engine as a library: plan a pipeline with a custom registry and run it in-process.

use std::sync::Arc;

use forge::cache::Store;
use forge::executor::{ApplyOptions, Status, apply};
use forge::ops::{
    ArtifactKind, CancelToken, InputSignature, OpError, OpRegistry, OutputSpec, StepContext,
    StepInputs, StepOutcome, TypedOp,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// An op with a bug.
struct Panicky;

impl TypedOp for Panicky {
    type Params = Empty;
    const NAME: &'static str = "panicky";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "always panics";
    fn inputs(&self, _: &Empty) -> InputSignature {
        InputSignature::Fixed(vec![])
    }
    fn outputs(&self, _: &Empty) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "out".into(),
            kind: ArtifactKind::Files,
        }]
    }
    fn run(&self, _: &StepContext, _: &StepInputs, _: &Empty) -> Result<StepOutcome, OpError> {
        panic!("index out of bounds in a user op")
    }
}

#[test]
fn a_panicking_op_fails_its_step_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "version: 1\nname: lib\nphases:\n  p:\n    steps:\n      boom: { op: panicky }\n      fine: { op: exec, with: { run: \"echo ok > $FORGE_OUTPUT/x\" } }\n";
    let path = dir.path().join("lib.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut registry = OpRegistry::builtin();
    registry.register(Panicky);
    let pipeline = forge::pipeline::load(&path).unwrap();
    let plan =
        forge::plan::build(pipeline, &registry).unwrap_or_else(|e| panic!("{:?}", e.diagnostics));
    let store = Store::open(dir.path().join(".forge")).unwrap();
    let mut run = store.new_run().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let emitter = forge::events::Emitter::new(tx);
    let opts = ApplyOptions {
        keep_going: true,
        jobs: 1,
        ..ApplyOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(apply(
        Arc::new(plan),
        store,
        opts,
        emitter,
        CancelToken::new(),
        &mut run,
    ));
    assert_eq!(report.status, "failed");
    assert_eq!(report.results[0].status, Status::Failed);
    assert!(
        report.results[0]
            .error
            .as_deref()
            .unwrap()
            .contains("op `panicky` panicked: index out of bounds")
    );
    assert_eq!(
        report.results[0].tier,
        Some(forge::ops::Tier::Internal),
        "a panic is a bug, not the user's input"
    );
    assert_eq!(
        forge::exit::for_failures(report.results.iter().filter_map(|r| r.tier)),
        forge::exit::INTERNAL
    );
    assert_eq!(report.results[1].status, Status::Ran);
    let events: Vec<_> = rx.try_iter().map(|e| e.event).collect();
    assert!(events.iter().any(|e| matches!(
        e,
        forge::events::Event::RunFinished {
            failed: 1,
            ran: 1,
            ..
        }
    )));
}
