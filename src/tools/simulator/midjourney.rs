//! Midjourney as midjourney-proxy and the relays speak it: the task object, its buttons, a submitted
//! task's lifecycle, the not-found styles, the submit answer and the mode segment before `/mj/`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::api::{Api, Lookup};
use super::{NotFound, State, Task, epoch_ms, error, json_response};

/// Midjourney's lookups (after the mode prefix): `GET /mj/task/{id}/fetch`, `POST list-by-condition`.
pub(super) fn midjourney_lookup(method: &Method, route: &str) -> Option<Lookup> {
    if *method == Method::GET {
        let id = route.strip_prefix("/mj/task/")?.strip_suffix("/fetch")?;
        return Some(Lookup::Fetch(Api::Midjourney, id.to_owned()));
    }
    (*method == Method::POST && route == "/mj/task/list-by-condition")
        .then_some(Lookup::Batch(Api::Midjourney))
}

pub(super) fn submit(
    state: &State,
    action: &str,
    body: &[u8],
    credential: Option<&str>,
) -> Response<Full<Bytes>> {
    let Some(credential) = credential else {
        return error(StatusCode::UNAUTHORIZED, 401, "missing credential");
    };
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, 400, "invalid json");
    };
    let prompt = request
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // An action (U1, V1, ...) or a modal acts on a task of this instance's: midjourney-proxy answers
    // `NOT_FOUND` (code 3, HTTP 200) for a parent it does not hold, or one of another's.
    let parent = request.get("taskId").and_then(Value::as_str);
    if matches!(action, "action" | "modal")
        && let Some(parent) = parent
    {
        let store = state.store.lock();
        let known = store
            .tasks
            .get(parent)
            .is_some_and(|task| task.api == Api::Midjourney && task.owner == credential);
        if !known {
            return error(StatusCode::OK, 3, "关联任务不存在或已失效");
        }
    }
    let id = state.new_id();
    let duration = *state.task_duration.lock();
    let mut store = state.store.lock();
    let running = store
        .tasks
        .values()
        .filter(|task| {
            task.api == Api::Midjourney
                && task
                    .lifecycle
                    .is_some_and(|(since, lasts)| since.elapsed() < lasts)
        })
        .count() as u64;
    state.peak_running.fetch_max(running + 1, Ordering::Relaxed);
    store.order.push(id.clone());
    store.tasks.insert(
        id.clone(),
        Task {
            api: Api::Midjourney,
            owner: credential.to_owned(),
            action: action.to_ascii_uppercase(),
            prompt,
            status: "SUBMITTED".into(),
            progress: "0%".into(),
            submit_time: epoch_ms(),
            fail_reason: String::new(),
            lifecycle: Some((Instant::now(), duration)),
            expires_at: None,
            updated_ms: epoch_ms(),
            hidden: state.hidden_lookups.load(Ordering::Relaxed),
        },
    );
    drop(store);
    state.submits.fetch_add(1, Ordering::Relaxed);
    let mut response = json_response(
        StatusCode::OK,
        &json!({"code": 1, "description": "Submit success", "result": id, "properties": {}}),
    );
    response
        .headers_mut()
        .insert("x-simulator", HeaderValue::from_static("submit"));
    response
}

/// The task object as midjourney-proxy serialises it.
pub(super) fn task_json(id: &str, task: &Task, image_url: &str) -> Value {
    let (status, progress) = match task.lifecycle {
        Some((started, duration)) => lifecycle_state(started.elapsed(), duration, &task.prompt),
        None => (task.status.clone(), task.progress.clone()),
    };
    let done = matches!(status.as_str(), "SUCCESS" | "FAILURE" | "CANCEL");
    let success = status == "SUCCESS";
    let fail_reason = if status == "FAILURE" && task.fail_reason.is_empty() {
        "simulated failure".to_owned()
    } else {
        task.fail_reason.clone()
    };
    json!({
        "id": id,
        "action": task.action,
        "status": status,
        "prompt": task.prompt,
        "promptEn": task.prompt,
        "description": format!("/imagine {}", task.prompt),
        "state": "",
        "progress": progress,
        "submitTime": task.submit_time,
        "startTime": task.submit_time + 1000,
        "finishTime": if done { Value::from(task.submit_time + 60_000) } else { Value::Null },
        "imageUrl": if success { image_url } else { "" },
        "failReason": fail_reason,
        "buttons": if success { buttons(id) } else { json!([]) },
        "properties": {},
    })
}

/// The buttons a finished imagine carries in midjourney-proxy: upscale 1-4, reroll, vary 1-4.
pub(super) fn buttons(id: &str) -> Value {
    let mut buttons = Vec::with_capacity(9);
    for i in 1..=4 {
        buttons.push(json!({"customId": format!("MJ::JOB::upsample::{i}::{id}"), "emoji": "", "label": format!("U{i}"), "type": 2, "style": 2}));
    }
    buttons.push(json!({"customId": format!("MJ::JOB::reroll::0::{id}::SOLO"), "emoji": "🔄", "label": "", "type": 2, "style": 2}));
    for i in 1..=4 {
        buttons.push(json!({"customId": format!("MJ::JOB::variation::{i}::{id}"), "emoji": "", "label": format!("V{i}"), "type": 2, "style": 2}));
    }
    Value::Array(buttons)
}

/// Where a submitted task is in its lifecycle: submitted, in progress by percent, then done.
pub(super) fn lifecycle_state(
    elapsed: Duration,
    duration: Duration,
    prompt: &str,
) -> (String, String) {
    let fraction = elapsed.as_secs_f64() / duration.as_secs_f64().max(0.001);
    if fraction < 0.1 {
        ("SUBMITTED".into(), "0%".into())
    } else if fraction < 1.0 {
        (
            "IN_PROGRESS".into(),
            format!("{}%", (fraction * 100.0) as u32),
        )
    } else if prompt.contains("--fail") {
        ("FAILURE".into(), String::new())
    } else {
        ("SUCCESS".into(), "100%".into())
    }
}

pub(super) fn progress_for(status: &str) -> &'static str {
    match status {
        "SUCCESS" => "100%",
        "IN_PROGRESS" => "50%",
        _ => "0%",
    }
}

pub(super) fn not_found(style: NotFound) -> Response<Full<Bytes>> {
    match style {
        NotFound::Status404 => error(StatusCode::NOT_FOUND, 4, "task_no_found"),
        NotFound::Status400 => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"description": "task_no_found ", "type": "upstream_error", "code": 4}),
        ),
        NotFound::EmptyBody => Response::new(Full::new(Bytes::new())),
        NotFound::NoContent => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
    }
}

pub(super) fn strip_mode(path: &str) -> &str {
    if path.starts_with("/mj/") {
        return path;
    }
    let rest = path.trim_start_matches('/');
    match rest.find('/') {
        Some(i) if rest[i..].starts_with("/mj/") => &rest[i..],
        _ => path,
    }
}
