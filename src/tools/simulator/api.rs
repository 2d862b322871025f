//! The task APIs the simulator speaks besides Midjourney, each in its own shape: routes, envelopes,
//! native status values and not-found answers, as the relays serve them (new-api's Go source and
//! crazyrouter's docs). Written from those shapes, not from the gateway's family table, so that the
//! tests check one against the other.

use serde_json::{Value, json};

/// One task API of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Midjourney,
    Suno,
    Kling,
    OpenAiVideos,
    VideoGenerations,
    VideoQuery,
    Runway,
    Luma,
    Volcengine,
}

/// Where a task is in its life, whatever an API calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// A request the simulator recognises as a task lookup of some API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `GET` of one task's status.
    Fetch(Api, String),
    /// `POST` of the API's batch route.
    Batch(Api),
}

impl Api {
    pub const ALL: [Api; 9] = [
        Api::Midjourney,
        Api::Suno,
        Api::Kling,
        Api::OpenAiVideos,
        Api::VideoGenerations,
        Api::VideoQuery,
        Api::Runway,
        Api::Luma,
        Api::Volcengine,
    ];

    /// The name the gateway's built-in family for this API has.
    pub fn name(self) -> &'static str {
        match self {
            Api::Midjourney => "midjourney",
            Api::Suno => "suno",
            Api::Kling => "kling",
            Api::OpenAiVideos => "openai-videos",
            Api::VideoGenerations => "video-generations",
            Api::VideoQuery => "video-query",
            Api::Runway => "runway",
            Api::Luma => "luma",
            Api::Volcengine => "volcengine",
        }
    }

    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.name() == name)
    }

    /// A command line's `--api`: one name, a comma-separated list, or `mix` for every API.
    pub fn parse_list(text: &str) -> Result<Vec<Api>, String> {
        if text == "mix" {
            return Ok(Api::ALL.to_vec());
        }
        text.split(',')
            .map(|name| {
                Api::from_name(name.trim()).ok_or_else(|| {
                    let known: Vec<&str> = Api::ALL.iter().map(|api| api.name()).collect();
                    format!("unknown API {name:?}: one of {}, or mix", known.join(", "))
                })
            })
            .collect()
    }

    /// The path (and query) a client polls task `id` at.
    pub fn status_path(self, id: &str) -> String {
        match self {
            Api::Midjourney => format!("/mj/task/{id}/fetch"),
            Api::Suno => format!("/suno/fetch/{id}"),
            Api::Kling => format!("/kling/v1/videos/text2video/{id}"),
            Api::OpenAiVideos => format!("/v1/videos/{id}"),
            Api::VideoGenerations => format!("/v1/video/generations/{id}"),
            Api::VideoQuery => format!("/v1/video/query?id={id}"),
            Api::Runway => format!("/runwayml/v1/tasks/{id}"),
            Api::Luma => format!("/luma/generations/{id}"),
            Api::Volcengine => format!("/volc/v1/contents/generations/tasks/{id}"),
        }
    }

    /// The batch route, for the APIs that have one.
    pub fn batch_path(self) -> Option<&'static str> {
        match self {
            Api::Midjourney => Some("/mj/task/list-by-condition"),
            Api::Suno => Some("/suno/fetch"),
            _ => None,
        }
    }

    /// The store key of task `id`: the bare id for Midjourney (as before the other APIs existed),
    /// `{name}/{id}` otherwise, so one id under two APIs is two tasks.
    pub fn key(self, id: &str) -> String {
        match self {
            Api::Midjourney => id.to_owned(),
            api => format!("{}/{id}", api.name()),
        }
    }

    /// This API's own word for `phase`.
    pub fn status(self, phase: Phase) -> &'static str {
        use Phase::{Failed, Queued, Running, Succeeded};
        match (self, phase) {
            (Api::Midjourney | Api::Suno, Queued) => "SUBMITTED",
            (Api::Midjourney | Api::Suno, Running) => "IN_PROGRESS",
            (Api::Midjourney | Api::Suno, Succeeded) => "SUCCESS",
            (Api::Midjourney | Api::Suno, Failed) => "FAILURE",
            (Api::Kling | Api::Luma | Api::Volcengine | Api::OpenAiVideos, Queued) => "queued",
            (Api::Kling | Api::VideoGenerations | Api::VideoQuery, Running) => "processing",
            (Api::VideoGenerations, Queued) => "submitted",
            (Api::VideoQuery, Queued) => "pending",
            (Api::OpenAiVideos, Running) => "in_progress",
            (Api::Luma, Running) => "dreaming",
            (Api::Volcengine, Running) => "running",
            (Api::Kling | Api::Volcengine, Succeeded) => "succeeded",
            (
                Api::OpenAiVideos | Api::VideoGenerations | Api::VideoQuery | Api::Luma,
                Succeeded,
            ) => "completed",
            (Api::Runway, Queued) => "PENDING",
            (Api::Runway, Running) => "RUNNING",
            (Api::Runway, Succeeded) => "SUCCEEDED",
            (Api::Runway, Failed) => "FAILED",
            (_, Failed) => "failed",
        }
    }

    /// The phase a status value of this API means (for answers built from a stored status).
    pub fn phase(self, status: &str) -> Phase {
        [Phase::Succeeded, Phase::Failed, Phase::Running]
            .into_iter()
            .find(|phase| self.status(*phase).eq_ignore_ascii_case(status))
            .unwrap_or(Phase::Queued)
    }

    /// The answer to a status lookup of a task (not Midjourney: the simulator builds that one).
    pub fn answer(self, id: &str, task: &ApiTask<'_>) -> Value {
        let done = matches!(self.phase(task.status), Phase::Succeeded);
        let url = task.result_url.clone();
        let result_url = if done {
            Value::from(url.clone())
        } else {
            Value::Null
        };
        let created = task.submit_time / 1000;
        match self {
            Api::Midjourney => json!({"id": id, "status": task.status}),
            Api::Suno => envelope(json!({
                "task_id": id,
                "platform": "suno",
                "action": "MUSIC",
                "status": task.status,
                "fail_reason": "",
                "submit_time": created,
                "start_time": created + 1,
                "finish_time": if done { Value::from(created + 60) } else { Value::Null },
                "progress": task.progress,
                // Each clip has its own status, which is not the task's.
                "data": [{"id": format!("{id}-clip-0"), "status": "streaming", "audio_url": result_url}],
            })),
            Api::Kling => envelope(json!({
                "error": null,
                "format": "mp4",
                "metadata": null,
                "status": task.status,
                "task_id": id,
                "url": result_url,
            })),
            Api::OpenAiVideos => json!({
                "id": id,
                "object": "video",
                "model": "sora-2",
                "status": task.status,
                "progress": task.progress.trim_end_matches('%').parse::<u64>().unwrap_or(0),
                "created_at": created,
                "completed_at": if done { Value::from(created + 60) } else { Value::Null },
                "expires_at": task.expires_at.map_or(Value::Null, Value::from),
                "error": null,
                "size": "1280x720",
                "seconds": "8",
            }),
            Api::VideoGenerations => envelope(json!({
                "task_id": id,
                "platform": "video",
                "status": task.status,
                "progress": task.progress,
                "result_url": result_url,
                "submit_time": created,
            })),
            Api::VideoQuery => json!({
                "id": id,
                "status": task.status,
                // Changes while the task runs, so a running answer is never byte-identical twice.
                "status_update_time": task.updated_ms,
                "video_url": result_url,
            }),
            Api::Runway => json!({
                "id": id,
                "status": task.status,
                "createdAt": created,
                "output": if done { json!([url]) } else { json!([]) },
            }),
            Api::Luma => json!({
                "id": id,
                "state": task.status,
                "created_at": created,
                "assets": if done { json!({"video": url}) } else { Value::Null },
            }),
            Api::Volcengine => json!({
                "id": id,
                "model": "doubao-seedance-1-0-pro",
                "status": task.status,
                "content": if done { json!({"video_url": url}) } else { Value::Null },
                "created_at": created,
                "updated_at": task.updated_ms / 1000,
            }),
        }
    }

    /// The task as one item of a batch answer (Suno's items are its tasks without the envelope).
    pub fn batch_item(self, id: &str, task: &ApiTask<'_>) -> Value {
        let answer = self.answer(id, task);
        match self {
            Api::Suno => answer["data"].clone(),
            _ => answer,
        }
    }

    /// A batch answer around `items`: Suno's envelope, with `"data": null` when none was found.
    pub fn batch_answer(self, items: Vec<Value>) -> Value {
        match self {
            Api::Suno if items.is_empty() => {
                json!({"code": "success", "message": "", "data": null})
            }
            Api::Suno => envelope(Value::Array(items)),
            _ => Value::Array(items),
        }
    }

    /// The status and body of this API's "no such task" answer.
    pub fn not_found(self) -> (u16, Value) {
        let task_not_exist =
            json!({"code": "task_not_exist", "message": "task_not_exist", "data": null});
        match self {
            Api::OpenAiVideos => (
                404,
                json!({"error": {"message": "Video not found", "type": "invalid_request_error", "param": null, "code": "not_found"}}),
            ),
            Api::Runway => (404, json!({"error": "Task not found"})),
            Api::Luma => (404, json!({"detail": "Generation not found"})),
            Api::Volcengine => (
                404,
                json!({"error": {"code": "ResourceNotFound", "message": "The specified task is not found"}}),
            ),
            _ => (400, task_not_exist),
        }
    }
}

/// What an API answer is built from.
pub struct ApiTask<'a> {
    pub status: &'a str,
    pub progress: &'a str,
    pub submit_time: u64,
    pub updated_ms: u64,
    pub expires_at: Option<u64>,
    /// The signed link to its result file (served by the simulator).
    pub result_url: String,
}

/// new-api's standard envelope.
fn envelope(data: Value) -> Value {
    json!({"code": "success", "message": "", "data": data})
}

/// The task lookup `method path?query` is, if any: each API's status route, its batch route.
/// Midjourney's (with its mode prefix) is matched by the simulator itself.
pub fn lookup(method: &http::Method, path: &str, query: Option<&str>) -> Option<Lookup> {
    let id_after = |prefix: &str| {
        path.strip_prefix(prefix)
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_owned)
    };
    if *method == http::Method::POST {
        return (path == "/suno/fetch").then_some(Lookup::Batch(Api::Suno));
    }
    if *method != http::Method::GET {
        return None;
    }
    const KLING: [&str; 6] = [
        "/kling/v1/videos/text2video/",
        "/kling/v1/videos/image2video/",
        "/kling/v1/videos/multi-image2video/",
        "/kling/v1/videos/omni-video/",
        "/kling/v1/images/generations/",
        "/kling/v1/images/kolors-virtual-try-on/",
    ];
    if let Some(id) = KLING.iter().find_map(|prefix| id_after(prefix)) {
        return Some(Lookup::Fetch(Api::Kling, id));
    }
    if path == "/v1/video/query" {
        let id = query?
            .split('&')
            .find_map(|pair| pair.strip_prefix("id="))?;
        return Some(Lookup::Fetch(Api::VideoQuery, id.to_owned()));
    }
    let routes = [
        ("/suno/fetch/", Api::Suno),
        ("/v1/videos/", Api::OpenAiVideos),
        ("/v1/video/generations/", Api::VideoGenerations),
        ("/runwayml/v1/tasks/", Api::Runway),
        ("/luma/generations/", Api::Luma),
        ("/volc/v1/contents/generations/tasks/", Api::Volcengine),
    ];
    routes
        .iter()
        .find_map(|(prefix, api)| Some(Lookup::Fetch(*api, id_after(prefix)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_names_its_phases_and_reads_them_back() {
        for api in Api::ALL {
            for phase in [
                Phase::Queued,
                Phase::Running,
                Phase::Succeeded,
                Phase::Failed,
            ] {
                assert_eq!(api.phase(api.status(phase)), phase, "{api:?} {phase:?}");
            }
            let path = api.status_path("t1");
            let (path, query) = match path.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (path, None),
            };
            if api != Api::Midjourney {
                assert_eq!(
                    lookup(&http::Method::GET, &path, query.as_deref()),
                    Some(Lookup::Fetch(api, "t1".into()))
                );
            }
        }
        assert_eq!(
            lookup(&http::Method::GET, "/v1/videos/t1/content", None),
            None
        );
    }
}
