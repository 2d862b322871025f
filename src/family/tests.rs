use super::*;
use crate::task::InvalidTaskId;
use http::Method;

fn families() -> Families {
    Families::builtin()
}

fn task_route(path: &str, query: Option<&str>) -> Option<(String, RouteKind, String)> {
    let f = families();
    match f.route(&Method::GET, path, query)? {
        Matched::Task {
            family, kind, id, ..
        } => Some((
            f.get(family).name().to_owned(),
            kind,
            id.map(|id| id.as_str().to_owned())
                .unwrap_or_else(|e| format!("bad: {e:?}")),
        )),
        Matched::Batch(_) => None,
    }
}

fn t(name: &str, id: &str) -> Option<(String, RouteKind, String)> {
    Some((name.to_owned(), RouteKind::Status, id.to_owned()))
}

#[test]
fn every_builtin_status_route_is_matched() {
    assert_eq!(task_route("/mj/task/1/fetch", None), t("midjourney", "1"));
    assert_eq!(
        task_route("/mj-fast/mj/task/1/fetch", None),
        t("midjourney", "1")
    );
    assert_eq!(task_route("/suno/fetch/s1", None), t("suno", "s1"));
    for kind in [
        "videos/text2video",
        "videos/image2video",
        "videos/multi-image2video",
        "videos/omni-video",
        "images/generations",
        "images/kolors-virtual-try-on",
    ] {
        assert_eq!(
            task_route(&format!("/kling/v1/{kind}/k1"), None),
            t("kling", "k1")
        );
    }
    assert_eq!(
        task_route("/v1/videos/video_1", None),
        t("openai-videos", "video_1")
    );
    assert_eq!(
        task_route("/v1/video/generations/g1", None),
        t("video-generations", "g1")
    );
    assert_eq!(
        task_route("/v1/video/query", Some("id=q1")),
        t("video-query", "q1")
    );
    assert_eq!(
        task_route("/v1/video/query", Some("x=1&id=q1&wait=5s")),
        t("video-query", "q1")
    );
    assert_eq!(task_route("/runwayml/v1/tasks/r1", None), t("runway", "r1"));
    assert_eq!(task_route("/luma/generations/l1", None), t("luma", "l1"));
    assert_eq!(
        task_route("/volc/v1/contents/generations/tasks/v1", None),
        t("volcengine", "v1")
    );
    assert_eq!(
        task_route("/mj/task/1/events", None),
        Some(("midjourney".into(), RouteKind::Events, "1".into()))
    );
    assert_eq!(
        task_route("/v1/videos/video_1/content", None),
        Some((
            "openai-videos".into(),
            RouteKind::Download,
            "video_1".into()
        )),
        "the download is its own kind of route"
    );
}

#[test]
fn other_paths_are_not_family_routes() {
    assert_eq!(task_route("/v1/videos", None), None);
    assert_eq!(task_route("/v1/videos/", None), None);
    assert_eq!(task_route("/v1/video/query", None), None);
    assert_eq!(task_route("/v1/video/query", Some("ids=1")), None);
    assert_eq!(task_route("/suno/fetch", None), None);
    assert_eq!(
        task_route("/a/b/mj/task/1/fetch", None),
        None,
        "one mode segment at most"
    );
    assert_eq!(
        task_route("/x/suno/fetch/1", None),
        None,
        "only midjourney has modes"
    );
    let f = families();
    assert_eq!(f.route(&Method::POST, "/v1/videos/1", None), None);
    assert_eq!(f.route(&Method::DELETE, "/v1/videos/1", None), None);
}

#[test]
fn a_bad_id_on_a_route_with_a_suffix_is_caught() {
    assert_eq!(
        task_route("/mj/task/a/b/fetch", None).unwrap().2,
        format!("bad: {:?}", InvalidTaskId::BadCharacter)
    );
    assert_eq!(
        task_route("/v1/video/query", Some("id=a%2Fb")).unwrap().2,
        format!("bad: {:?}", InvalidTaskId::BadCharacter)
    );
}

#[test]
fn batch_routes_are_posts() {
    let f = families();
    let name = |m: Option<Matched<'_>>| match m {
        Some(Matched::Batch(id)) => Some(f.get(id).name().to_owned()),
        _ => None,
    };
    assert_eq!(
        name(f.route(&Method::POST, "/mj/task/list-by-condition", None)).as_deref(),
        Some("midjourney")
    );
    assert_eq!(
        name(f.route(&Method::POST, "/mj-turbo/mj/task/list-by-condition", None)).as_deref(),
        Some("midjourney")
    );
    assert_eq!(
        name(f.route(&Method::POST, "/suno/fetch", None)).as_deref(),
        Some("suno")
    );
    assert_eq!(name(f.route(&Method::GET, "/suno/fetch", None)), None);
}

#[test]
fn statuses_are_case_insensitive_and_unknown_ones_are_running() {
    let f = families();
    let luma = f.by_name("luma").unwrap();
    assert_eq!(luma.class_of("completed"), TaskClass::Terminal);
    assert_eq!(luma.class_of("COMPLETED"), TaskClass::Terminal);
    assert_eq!(luma.class_of("failed"), TaskClass::Terminal);
    for running in [
        "dreaming",
        "queued",
        "unknown",
        "",
        "NOT_START",
        "brand-new",
    ] {
        assert_eq!(luma.class_of(running), TaskClass::InProgress, "{running}");
    }
    let mj = f.by_name("midjourney").unwrap();
    assert_eq!(mj.class_of("success"), TaskClass::Terminal);
    assert_eq!(mj.class_of("CANCEL"), TaskClass::Terminal);
    assert_eq!(mj.class_of("MODAL"), TaskClass::InProgress);
    assert_eq!(
        mj.class_of("completed"),
        TaskClass::InProgress,
        "midjourney's own list"
    );
}

#[test]
fn an_answer_is_classified_only_for_its_own_task() {
    let f = families();
    let suno = f.by_name("suno").unwrap();
    let done = br#"{"code":"success","message":"","data":{"task_id":"s1","status":"SUCCESS","data":[{"status":"streaming"}]}}"#;
    assert_eq!(
        suno.classify(done, "s1").unwrap().class,
        TaskClass::Terminal
    );
    assert_eq!(suno.classify(done, "s2"), None, "another task's answer");
    assert_eq!(
        suno.classify(
            br#"{"code":"task_not_exist","message":"task_not_exist","data":null}"#,
            "s1"
        ),
        None
    );
    assert_eq!(suno.classify(b"[1]", "s1"), None);
    let mj = f.by_name("midjourney").unwrap();
    assert_eq!(
        mj.classify(br#"{"id":"t1"}"#, "t1").unwrap().class,
        TaskClass::InProgress
    );
    assert_eq!(
        mj.classify(br#"{"code":4,"description":"task_no_found"}"#, "t1"),
        None
    );
    let vg = f.by_name("video-generations").unwrap();
    assert_eq!(
        vg.classify(br#"{"task_id":"g","status":"succeeded"}"#, "g")
            .unwrap()
            .class,
        TaskClass::Terminal
    );
    assert_eq!(
        vg.classify(br#"{"data":{"task_id":"g","status":"processing"}}"#, "g")
            .unwrap()
            .class,
        TaskClass::InProgress
    );
}

#[test]
fn not_found_shapes_per_family() {
    let f = families();
    let suno = f.by_name("suno").unwrap();
    assert!(suno.is_not_found(
        400,
        br#"{"code":"task_not_exist","message":"task_not_exist","data":null}"#
    ));
    assert!(suno.is_not_found(404, b"{}"));
    assert!(!suno.is_not_found(400, br#"{"code":"invalid_request"}"#));
    assert!(!suno.is_not_found(200, b""));
    let mj = f.by_name("midjourney").unwrap();
    assert!(mj.is_not_found(200, b"  "));
    assert!(mj.is_not_found(204, b""));
    assert!(mj.is_not_found(400, br#"{"description":"task_no_found ","code":4}"#));
    assert!(!mj.is_not_found(500, b""));
    assert!(!mj.is_not_found(200, br#"{"id":"t","status":"SUCCESS"}"#));
}

#[test]
fn finished_answers_expire_when_they_say_so() {
    let f = families();
    let openai = f.by_name("openai-videos").unwrap();
    let soon = std::time::SystemTime::now() + Duration::from_secs(60);
    let at = soon
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = format!(r#"{{"id":"v","object":"video","status":"completed","expires_at":{at}}}"#);
    let keep = openai
        .classify(body.as_bytes(), "v")
        .unwrap()
        .keep_until
        .unwrap();
    let left = keep.saturating_duration_since(Instant::now());
    assert!(
        left <= Duration::from_secs(60) && left >= Duration::from_secs(55),
        "{left:?}"
    );
    let running = format!(r#"{{"id":"v","status":"in_progress","expires_at":{at}}}"#);
    assert_eq!(
        openai.classify(running.as_bytes(), "v").unwrap().keep_until,
        None
    );
    let runway = f.by_name("runway").unwrap();
    let keep = runway
        .classify(
            br#"{"id":"r","status":"SUCCEEDED","output":["https://x/y.mp4"]}"#,
            "r",
        )
        .unwrap()
        .keep_until
        .unwrap();
    assert!(
        keep > Instant::now() + Duration::from_secs(23 * 3600),
        "the family's cap"
    );
    let mj = f.by_name("midjourney").unwrap();
    assert_eq!(
        mj.classify(br#"{"id":"t","status":"SUCCESS"}"#, "t")
            .unwrap()
            .keep_until,
        None
    );
}

#[test]
fn batch_items_are_wrapped_and_found_again() {
    let f = families();
    let suno = f.by_name("suno").unwrap();
    let batch = suno.batch().unwrap();
    let item = serde_json::json!({"task_id": "s1", "status": "IN_PROGRESS"});
    let (id, classified) = suno.classify_item(&item, batch).unwrap();
    assert_eq!(
        (id.as_str(), classified.class),
        ("s1", TaskClass::InProgress)
    );
    let text = item.to_string();
    let (body, span) = suno.wrap_task(text.as_bytes());
    assert_eq!(&body[span.clone()], text.as_bytes());
    assert_eq!(
        suno.classify(&body, "s1").unwrap().class,
        TaskClass::InProgress,
        "a status answer"
    );
    assert_eq!(suno.task_span(&body), Some(span));
    let spaced = br#"{ "code": "success", "data" : {"task_id":"s1"} }"#;
    let span = suno.task_span(spaced).unwrap();
    assert_eq!(&spaced[span], br#"{"task_id":"s1"}"#);
    assert_eq!(
        batch.answer(b"", 0),
        br#"{"code":"success","message":"","data":null}"#
    );
    assert_eq!(
        batch.answer(b"{}", 1),
        br#"{"code":"success","message":"","data":[{}]}"#
    );
}

fn with(name: &str, toml_text: &str) -> Result<Families, FamilyError> {
    let spec: toml::Table = toml::from_str(toml_text).unwrap();
    let mut overrides = toml::Table::new();
    overrides.insert(name.to_owned(), toml::Value::Table(spec));
    Families::new(overrides)
}

#[test]
fn an_operator_adds_a_family_in_a_few_lines() {
    let f = with(
        "acme",
        r#"
        status_routes = ["/acme/jobs/{id}"]
        status_at = ["/job/state"]
        success = ["done"]
        "#,
    )
    .unwrap();
    let acme = f.by_name("acme").unwrap();
    assert_eq!(acme.id(), FamilyId(9), "after the built-ins");
    assert_eq!(acme.class_of("DONE"), TaskClass::Terminal);
    assert_eq!(
        acme.class_of("failed"),
        TaskClass::Terminal,
        "the common failure values"
    );
    assert!(matches!(
        f.route(&Method::GET, "/acme/jobs/j1", None),
        Some(Matched::Task {
            family: FamilyId(9),
            ..
        })
    ));
}

#[test]
fn families_can_be_turned_off_and_changed() {
    let f = with("luma", "enabled = false").unwrap();
    assert!(f.by_name("luma").is_none());
    assert_eq!(f.route(&Method::GET, "/luma/generations/l1", None), None);
    let f = with("suno", r#"finished_ttl = "1h""#).unwrap();
    let suno = f.by_name("suno").unwrap();
    assert!(suno.batch().is_some(), "other keys stay the built-in's");
    let done = br#"{"data":{"task_id":"s","status":"SUCCESS"}}"#;
    assert!(suno.classify(done, "s").unwrap().keep_until.is_some());
}

#[test]
fn a_bad_description_names_its_key() {
    let routes = |template: &str| format!("status_routes = [\"{template}\"]\nstatus_at = [\"/s\"]");
    let long = "x".repeat(5000);
    let cases: Vec<(&str, String, &str)> =
        vec![
        (
            "acme",
            r#"status_at = ["/s"]"#.into(),
            "families.acme.status_routes",
        ),
        (
            "acme",
            r#"status_routes = ["/a/{id}"]"#.into(),
            "families.acme.status_at",
        ),
        ("acme", routes("/a/x{id}"), "families.acme.status_routes"),
        (
            "acme",
            routes("/suno/fetch/{id}"),
            "families.acme.status_routes",
        ),
        ("acme", routes("/x//{id}"), "families.acme.status_routes"),
        ("acme", routes("/x/../{id}"), "families.acme.status_routes"),
        (
            "acme",
            routes("/x/%7Bid%7D/{id}"),
            "families.acme.status_routes",
        ),
        ("acme", routes("/{id}/x"), "families.acme.status_routes"),
        (
            "acme",
            routes("/v1/video/query?task={id}"),
            "families.acme.status_routes",
        ),
        ("Acme", routes("/a/{id}"), "families.Acme"),
        (
            "acme",
            "status_routes = [\"/a/{id}\"]\nstatus_at = [\"s\"]".into(),
            "families.acme.status_at",
        ),
        (
            "acme",
            "status_routes = [\"/a/{id}\"]\nstatus_at = [\"/a/~2b\"]".into(),
            "families.acme.status_at",
        ),
        (
            "acme",
            format!("{}\nsuccess = [\"\"]", routes("/a/{id}")),
            "families.acme.success",
        ),
        (
            "suno",
            r#"task_answer = "{}""#.into(),
            "families.suno.task_answer",
        ),
        (
            "suno",
            "[submit]\nroutes = [\"suno/submit\"]\ncallback_field = \"hook\"\nid_at = [\"/data\"]"
                .into(),
            "families.suno.submit.routes",
        ),
        (
            "suno",
            "[submit]\nroutes = [\"/suno/*/music\"]\nid_at = [\"/data\"]".into(),
            "families.suno.submit.routes",
        ),
        (
            "suno",
            "[submit]\nroutes = [\"/suno/submit\"]\nid_at = [\"/data\"]\naccepted = [\"1\"]".into(),
            "families.suno.submit.accepted_at",
        ),
        (
            "acme",
            format!("{}\nsuccess = [\"done\"]\nfailure = [\"DONE\"]", routes("/a/{id}")),
            "families.acme.failure",
        ),
        ("acme", "status_at = 7".into(), "families.acme.status_at"),
        (
            "suno",
            "[submit]\nroutes = [\"/suno/submit/music\"]\ncallback_field = \"hook\"".into(),
            "families.suno.submit.id_at",
        ),
        (
            "acme",
            format!("{}\nnot_found = [{{ status = 200 }}]", routes("/a/{id}")),
            "families.acme.not_found[0]",
        ),
        (
            "acme",
            format!(
                "{}\nnot_found = [{{ status = 404, contains = \"{long}\" }}]",
                routes("/a/{id}")
            ),
            "families.acme.not_found[0].contains",
        ),
    ];
    for (name, text, expected) in cases {
        let error = with(name, &text).unwrap_err();
        assert_eq!(error.key, expected, "{text}: {error}");
    }
}

#[test]
fn the_upstream_path_is_the_status_route_of_the_task() {
    let f = families();
    let path = |path: &str, query: Option<&str>| match f.route(&Method::GET, path, query) {
        Some(Matched::Task { id: Ok(id), at, .. }) => f.upstream_path(at, id),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        path("/mj-fast/mj/task/1/fetch", None),
        "/mj-fast/mj/task/1/fetch"
    );
    assert_eq!(
        path("/mj-fast/mj/task/1/events", None),
        "/mj-fast/mj/task/1/fetch"
    );
    assert_eq!(
        path("/v1/video/query", Some("wait=5s&id=q&x=1")),
        "/v1/video/query?id=q"
    );
    assert_eq!(
        path("/kling/v1/images/generations/k", Some("wait=1s")),
        "/kling/v1/images/generations/k"
    );
}

#[test]
fn midjourney_answers_classify_as_before() {
    let f = families();
    let mj = f.by_name("midjourney").unwrap();
    let class = |body: &[u8], id: &str| mj.classify(body, id).map(|c| c.class);
    let ok = br#"{"id":"t1","status":"SUCCESS","progress":"100%"}"#;
    assert_eq!(class(ok, "t1"), Some(TaskClass::Terminal));
    assert_eq!(class(ok, "t2"), None);
    assert_eq!(
        class(br#"{"id":"t1","status":"IN_PROGRESS"}"#, "t1"),
        Some(TaskClass::InProgress)
    );
    assert_eq!(
        class(br#"{"id":"t1"}"#, "t1"),
        Some(TaskClass::InProgress),
        "new-api right after submit"
    );
    assert_eq!(class(b"", "t1"), None);
    assert_eq!(class(b"[1,2]", "t1"), None);
    assert_eq!(class(b"null", "t1"), None);
    assert_eq!(
        class(br#"["t1","SUCCESS"]"#, "t1"),
        None,
        "an array is not a task"
    );
    assert_eq!(
        class(b" \n{\"id\":\"t1\",\"status\":\"SUCCESS\"}", "t1"),
        Some(TaskClass::Terminal)
    );
    assert_eq!(
        class(br#"{"id":"t\u0031","status":"SUCCESS"}"#, "t1"),
        Some(TaskClass::Terminal),
        "escaped strings compare by value"
    );
    assert!(mj.is_not_found(404, br#"{"code":4,"description":"task_no_found"}"#));
    assert!(!mj.is_not_found(400, br#"{"code":400,"description":"bad request"}"#));
    assert!(!mj.is_not_found(429, b""));
}

fn overrides(toml_text: &str) -> toml::Table {
    toml::from_str(toml_text).unwrap()
}

const ACME: &str = r#"
[acme]
status_routes = ["/acme/jobs/{id}"]
status_at = ["/job/state"]
success = ["done"]
"#;

#[test]
fn a_reload_keeps_every_number_and_never_reuses_a_removed_one() {
    let running = Families::new(overrides(&format!("[luma]\nenabled = false\n{ACME}"))).unwrap();
    let acme = running.by_name("acme").unwrap().id();
    let suno = running.by_name("suno").unwrap().id();

    // Luma back on, acme gone, a new family added: written in another order.
    let file = overrides(
        r#"
        [zeta]
        status_routes = ["/zeta/{id}"]
        status_at = ["/state"]
        "#,
    );
    let next = Families::new(file).unwrap().rebase(&running).unwrap();
    assert_eq!(next.by_name("suno").unwrap().id(), suno, "kept");
    assert!(next.by_name("acme").is_none(), "retired");
    assert_eq!(next.retired_from(&running), [acme]);
    let fresh: Vec<FamilyId> = ["luma", "zeta"]
        .iter()
        .map(|name| next.by_name(name).unwrap().id())
        .collect();
    assert!(
        fresh.iter().all(|id| id.index() >= running.all().len()),
        "new families take numbers never used: {fresh:?}"
    );
    assert_eq!(next.route(&Method::GET, "/acme/jobs/j1", None), None);
    assert!(matches!(
        next.route(&Method::GET, "/zeta/z1", None),
        Some(Matched::Task { family, .. }) if family == fresh[1]
    ));

    // Acme again: its own number back (never another family's, and its entries were purged).
    let again = Families::new(overrides(ACME))
        .unwrap()
        .rebase(&next)
        .unwrap();
    let back = again.by_name("acme").unwrap().id();
    assert_eq!(back, acme);
    assert_eq!(again.retired_from(&next), [fresh[1]], "zeta");
    assert!(again.by_name("zeta").is_none() && again.by_name("luma").is_some());
}

#[test]
fn numbers_run_out_only_after_many_reloads_and_say_so() {
    let mut running = Families::builtin();
    let mut refused = None;
    for n in 0..MAX_FAMILIES {
        let file = overrides(&format!(
            "[f{n}]\nstatus_routes = [\"/f{n}/{{id}}\"]\nstatus_at = [\"/s\"]\n"
        ));
        match Families::new(file).unwrap().rebase(&running) {
            Ok(next) => running = next,
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("numbers are bounded");
    assert!(refused.contains("restart"), "{refused}");
    assert!(
        running.by_name("suno").is_some(),
        "the last good set stands"
    );
}

#[test]
fn each_family_claims_the_path_prefix_its_routes_share() {
    let f = families();
    let prefix = |name: &str| f.by_name(name).unwrap().prefix().to_owned();
    assert_eq!(prefix("midjourney"), "/mj/");
    assert_eq!(prefix("suno"), "/suno/");
    assert_eq!(prefix("kling"), "/kling/v1/");
    // `/v1/videos` is itself a route: the prefix is that segment, not all of `/v1/`.
    assert_eq!(prefix("openai-videos"), "/v1/videos/");
    assert_eq!(prefix("video-generations"), "/v1/video/generations/");
    assert_eq!(prefix("video-query"), "/v1/video/");
    let mj = f.by_name("midjourney").unwrap();
    assert_eq!(mj.claims("/mj/image/123"), Some(4));
    assert_eq!(mj.claims("/mjx/image"), None);
    let videos = f.by_name("openai-videos").unwrap();
    assert_eq!(videos.claims("/v1/videos"), Some(11));
    assert_eq!(videos.claims("/v1/videos/v_1/remix"), Some(11));
    assert_eq!(videos.claims("/v1/chat/completions"), None);
    assert_eq!(videos.claims("/v1/videosx"), None);
}

#[test]
fn a_family_whose_routes_share_nothing_claims_no_passthrough() {
    let mut table = toml::Table::new();
    table.insert(
        "odd".into(),
        toml::toml! {
            status_routes = ["/a/{id}", "/b/{id}"]
            status_at = ["/status"]
            id_at = ["/id"]
        }
        .into(),
    );
    let f = Families::new(table).unwrap();
    let odd = f.by_name("odd").unwrap();
    assert_eq!(odd.prefix(), "/");
    assert_eq!(odd.claims("/a/1"), None);
    assert_eq!(odd.claims("/"), None);
}
