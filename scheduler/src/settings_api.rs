//! Settings as the API shows and changes them: conversions between the proto messages and the
//! store's [`Settings`] / [`SettingsPatch`], with every bad value named.

use std::time::Duration;

use ferry_proto::scheduler::v1 as pb;

use crate::error::SchedulerError;
use crate::store::{Change, Settings, SettingsPatch};

fn uint(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// The settings as the API shows them.
pub fn to_proto(settings: &Settings) -> pb::Settings {
    pb::Settings {
        enabled: settings.enabled,
        capacity: uint(settings.capacity),
        max_retries: uint(settings.max_retries),
        max_step_duration_secs: secs(settings.max_step_duration),
        pre_import_timeout_secs: secs(settings.pre_import_timeout),
        import_timeout_secs: secs(settings.import_timeout),
        max_tags_count: uint(settings.max_tags_count),
        start_max_retries: uint(settings.start_max_retries),
        pre_import_tags_rate: settings.pre_import_tags_rate,
        enqueue_waiting_time_secs: secs(settings.enqueue_waiting_time),
        created_before: settings
            .created_before
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        target_plans: settings
            .target_plans
            .clone()
            .map(|values| pb::StringList { values }),
        deny_root_namespaces: settings.deny_root_namespaces.clone(),
        repair_enabled: settings.repair_enabled,
        repair_max_concurrency: uint(settings.repair_max_concurrency),
        repair_stale_after_secs: secs(settings.repair_stale_after),
    }
}

/// The patch an update request asks for, or every problem with it.
pub fn patch_from_proto(
    request: pb::UpdateSettingsRequest,
) -> Result<SettingsPatch, SchedulerError> {
    let mut problems = Vec::new();
    let mut int = |name: &str, value: Option<u32>| {
        value.and_then(|v| match i32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                problems.push(format!("{name} is too large"));
                None
            }
        })
    };
    let capacity = int("capacity", request.capacity);
    let max_retries = int("max_retries", request.max_retries);
    let max_tags_count = int("max_tags_count", request.max_tags_count);
    let start_max_retries = int("start_max_retries", request.start_max_retries);
    let repair_max_concurrency = int("repair_max_concurrency", request.repair_max_concurrency);
    let duration = |v: Option<u32>| v.map(|s| Duration::from_secs(u64::from(s)));
    let created_before = match request.created_before.as_deref() {
        None => Change::Keep,
        Some("") => Change::Clear,
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) => Change::Set(at.with_timezone(&chrono::Utc)),
            Err(error) => {
                problems.push(format!(
                    "created_before {text:?} is not an RFC 3339 time ({error})"
                ));
                Change::Keep
            }
        },
    };
    let patch = SettingsPatch {
        enabled: request.enabled,
        capacity,
        max_retries,
        max_step_duration: duration(request.max_step_duration_secs),
        pre_import_timeout: duration(request.pre_import_timeout_secs),
        import_timeout: duration(request.import_timeout_secs),
        max_tags_count,
        start_max_retries,
        pre_import_tags_rate: request.pre_import_tags_rate,
        enqueue_waiting_time: duration(request.enqueue_waiting_time_secs),
        created_before,
        target_plans: match request.target_plans {
            None => Change::Keep,
            Some(list) if list.values.is_empty() => Change::Clear,
            Some(list) => Change::Set(list.values),
        },
        deny_root_namespaces: request.deny_root_namespaces.map(|l| l.values),
        repair_enabled: request.repair_enabled,
        repair_max_concurrency,
        repair_stale_after: duration(request.repair_stale_after_secs),
    };
    problems.extend(patch.problems());
    if problems.is_empty() {
        Ok(patch)
    } else {
        Err(SchedulerError::InvalidArgument(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_value_is_named() {
        let request = pb::UpdateSettingsRequest {
            capacity: Some(u32::MAX),
            created_before: Some("yesterday".into()),
            max_step_duration_secs: Some(0),
            ..Default::default()
        };
        let error = patch_from_proto(request).unwrap_err().to_string();
        for name in ["capacity", "created_before", "max_step_duration"] {
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn empty_lists_and_strings_clear() {
        let request = pb::UpdateSettingsRequest {
            created_before: Some(String::new()),
            target_plans: Some(pb::StringList { values: vec![] }),
            deny_root_namespaces: Some(pb::StringList {
                values: vec!["gitlab-org".into()],
            }),
            ..Default::default()
        };
        let patch = patch_from_proto(request).unwrap();
        assert_eq!(patch.created_before, Change::Clear);
        assert_eq!(patch.target_plans, Change::Clear, "empty = all plans");
        assert_eq!(
            patch.deny_root_namespaces,
            Some(vec!["gitlab-org".to_owned()])
        );
    }
}
