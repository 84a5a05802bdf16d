//! The guard's verdicts on stale steps, and their time limits.

use ferry_shared::step::Step;

use super::*;

fn step(state: &str, age_seconds: f64) -> StaleStep {
    let state = MigrationState::parse(state).expect("a state");
    StaleStep {
        id: 1,
        path: "g/p/app".into(),
        migration_state: state,
        migration_importer: Some("http://importer".into()),
        migration_step: Step::from_db(3),
        migration_retries_count: 0,
        age_seconds,
        migration_tags_count: None,
    }
}

fn settings() -> Settings {
    Settings {
        enabled: true,
        capacity: 2,
        ..Settings::default()
    }
}

fn at_step(status: MigrationStatus, step: i64, running: bool) -> Result<StepStatus, ImporterError> {
    Ok(StepStatus {
        status,
        step: Step::from_db(step),
        running,
        detail: String::new(),
    })
}

fn ok(status: MigrationStatus, running: bool) -> Result<StepStatus, ImporterError> {
    at_step(status, 3, running)
}

#[test]
fn steps_are_judged_by_their_number() {
    use MigrationStatus::*;
    let s = settings();
    // The start never reached an importer: the importer's row is at an older step.
    assert!(matches!(
        verdict(
            &step("importing", 400.0),
            at_step(ImportCanceled, 2, false),
            &s
        ),
        Verdict::Orphaned(_)
    ));
    // An older step's in-progress status is not this step running.
    assert!(matches!(
        verdict(
            &step("importing", 400.0),
            at_step(ImportInProgress, 2, false),
            &s
        ),
        Verdict::Orphaned(_)
    ));
    // A completed final import is final whichever step completed it.
    assert_eq!(
        verdict(
            &step("importing", 400.0),
            at_step(ImportComplete, 2, false),
            &s
        ),
        Verdict::FinishImport
    );
    // A newer step than the scheduler's is never taken for this one.
    assert!(matches!(
        verdict(
            &step("pre_importing", 400.0),
            at_step(PreImportComplete, 4, false),
            &s
        ),
        Verdict::Abort(_)
    ));
}

#[test]
fn a_step_from_before_numbering_is_older_than_every_numbered_one() {
    use MigrationStatus::*;
    let s = settings();
    let mut unnumbered = step("importing", 400.0);
    unnumbered.migration_step = None;
    assert_eq!(
        verdict(&unnumbered, at_step(ImportInProgress, 0, true), &s),
        Verdict::LeaveAlone
    );
    match verdict(&unnumbered, at_step(ImportInProgress, 1, true), &s) {
        Verdict::Abort(reason) => assert_eq!(
            reason,
            "the importer is at step 1, newer than the scheduler's 0"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unrecorded_step_is_not_orphaned_while_an_importer_cannot_be_asked() {
    let s = settings();
    let mut unrecorded = step("importing", 400.0);
    unrecorded.migration_importer = None;
    let unknown = || {
        Err(ImporterError::Unreachable(
            "importer-2 did not answer".into(),
        ))
    };
    assert_eq!(verdict(&unrecorded, unknown(), &s), Verdict::LeaveAlone);
    unrecorded.age_seconds = 601.0;
    assert!(matches!(
        verdict(&unrecorded, unknown(), &s),
        Verdict::Orphaned(_)
    ));
}

#[test]
fn running_steps_are_left_alone_until_their_limit() {
    use MigrationStatus::*;
    let s = settings();
    assert_eq!(
        verdict(
            &step("pre_importing", 400.0),
            ok(PreImportInProgress, true),
            &s
        ),
        Verdict::LeaveAlone
    );
    assert_eq!(
        verdict(
            &step("pre_importing", 2000.0),
            ok(PreImportInProgress, true),
            &s
        ),
        Verdict::CancelLongRunning
    );
    assert_eq!(
        verdict(&step("importing", 601.0), ok(ImportInProgress, true), &s),
        Verdict::CancelLongRunning
    );
}

#[test]
fn lost_notifications_are_reconciled_and_dead_steps_orphaned() {
    use MigrationStatus::*;
    let s = settings();
    assert_eq!(
        verdict(
            &step("pre_importing", 400.0),
            ok(PreImportComplete, false),
            &s
        ),
        Verdict::FinishPreImport
    );
    assert_eq!(
        verdict(&step("importing", 400.0), ok(ImportComplete, false), &s),
        Verdict::FinishImport
    );
    assert_eq!(
        verdict(&step("importing", 400.0), ok(Native, false), &s),
        Verdict::Native
    );
    assert!(matches!(
        verdict(
            &step("pre_importing", 400.0),
            ok(PreImportInProgress, false),
            &s
        ),
        Verdict::Orphaned(_)
    ));
    assert!(matches!(
        verdict(
            &step("importing", 400.0),
            Err(ImporterError::Unreachable("down".into())),
            &s
        ),
        Verdict::Orphaned(_)
    ));
    assert!(matches!(
        verdict(&step("importing", 400.0), ok(ImportFailed, false), &s),
        Verdict::Abort(_)
    ));
    assert!(matches!(
        verdict(
            &step("pre_import_done", 400.0),
            ok(PreImportComplete, false),
            &s
        ),
        Verdict::Abort(_)
    ));
    assert!(matches!(
        verdict(&step("importing", 400.0), ok(PreImportComplete, false), &s),
        Verdict::Abort(_)
    ));
    assert!(matches!(
        verdict(
            &step("importing", 400.0),
            Err(ImporterError::Refused {
                code: tonic::Code::NotFound,
                message: "no row".into(),
            }),
            &s
        ),
        Verdict::Abort(_)
    ));
}

#[test]
fn every_verdict_is_a_metric_label() {
    let verdicts = [
        Verdict::LeaveAlone,
        Verdict::CancelLongRunning,
        Verdict::Orphaned(String::new()),
        Verdict::FinishPreImport,
        Verdict::FinishImport,
        Verdict::Native,
        Verdict::Abort(String::new()),
    ];
    let labels: Vec<&str> = verdicts.iter().map(Verdict::label).collect();
    assert_eq!(labels, Verdict::LABELS);
}

#[test]
fn a_pre_import_of_many_tags_gets_a_longer_time_limit() {
    let s = settings();
    let mut big = step("pre_importing", 0.0);
    big.migration_tags_count = Some(10_000);
    assert_eq!(time_limit(&big, &s), s.pre_import_limit(Some(10_000)));
    assert!(time_limit(&big, &s) > s.pre_import_timeout);
    assert_eq!(time_limit(&step("importing", 0.0), &s), s.import_timeout);
}
