//! The live page in a real browser: `kilowatt simulate` serves it on loopback. Debian's Chromium,
//! headless and driven by Debian's chromedriver over WebDriver, loads it and waits for data. The test
//! then checks the DOM as the simulation moves on, checks that the curve charts and the live chart draw
//! what the overview holds, and takes a screenshot.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use kilowatt_tests::*;
use kilowatt_tests::{eventually, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kilowatt simulate` with `args`; returns it and the page's address, read from its stderr.
fn start_simulate(args: &[&str], log: &Path) -> (Killed, String) {
    let mut child = Command::new(workspace_binary("kilowatt"))
        .arg("simulate")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kilowatt simulate starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("kilowatt simulate exited before serving the page")
            .expect("stderr line");
        if let Some(rest) = line.split_once("live page at ").map(|(_, r)| r) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    // The rest of stderr goes to the test's log, so the pipe never fills.
    let log = log.to_owned();
    std::thread::spawn(move || {
        let text: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = std::fs::write(log, text.join("\n"));
    });
    (Killed(child), url)
}

/// One WebDriver call to chromedriver on `port`; returns the response's `value`.
async fn webdriver(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = within(&format!("webdriver {method} {path}"), async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to chromedriver");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        // NB: chromedriver keeps the connection open whatever the request says: read the headers, then
        // Content-Length bytes.
        let mut response = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let read = stream.read(&mut chunk).await.expect("read response");
            response.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(usize::MAX);
                if body.len() >= length {
                    break;
                }
            }
            if read == 0 {
                break;
            }
        }
        response
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("chromedriver answered {method} {path} with {text:?}: {e}"));
    assert!(
        value["value"]["error"].is_null(),
        "chromedriver refused {method} {path}: {value}"
    );
    value["value"].clone()
}

/// Runs `script` in the page and returns what it returns.
async fn script(port: u16, session: &str, script: &str) -> Value {
    webdriver(
        port,
        "POST",
        &format!("/session/{session}/execute/sync"),
        Some(json!({"script": script, "args": []})),
    )
    .await
}

/// Counts, in the page, what the charts draw and what `GET /api/v1/overview` says they should: per
/// workload its learned markers and lower-bound markers, and whether its declared line and limit mark
/// are there; the live chart's points per line. NB: a synchronous request, so that both sides are read
/// in one script.
const CHARTS_AGAINST_THE_API: &str = r##"
const request = new XMLHttpRequest();
request.open("GET", "api/v1/overview", false);
request.send();
const overview = JSON.parse(request.responseText);
const pointsOf = series => {
  const line = document.querySelector(`#history polyline[data-series="${series}"]`);
  return line ? line.getAttribute("points").trim().split(/\s+/).filter(Boolean).length : 0;
};
const drawnRows = Array.from(document.querySelectorAll("#workloads tr")).map(row => {
  const chart = row.querySelector("svg.curve");
  return [row.dataset.workload,
    chart ? chart.querySelectorAll("circle.learned").length : 0,
    chart ? chart.querySelectorAll("circle.learned.lower-bound").length : 0,
    !!chart && chart.querySelector("polyline.declared").getAttribute("points").trim() !== ""
      && !!chart.querySelector("line.limit-mark")];
});
const apiRows = overview.workloads.map(w => [w.name,
  w.curve ? w.curve.learned.length : 0,
  w.curve ? w.curve.learned.filter(p => p.lowerBound).length : 0,
  !!w.curve && w.curve.declared.length > 0]);
const measured = overview.history.filter(s => s.budgets.length > 0
  && s.budgets.every(b => b.measuredWatts !== null)).length;
return {
  drawn: { workloads: drawnRows,
           history: { cap: pointsOf("cap"), allocated: pointsOf("allocated"),
                      measured: pointsOf("measured"), throughput: pointsOf("throughput") } },
  api: { workloads: apiRows,
         history: { cap: overview.history.length, allocated: overview.history.length,
                    measured, throughput: overview.history.length } },
};
"##;

#[tokio::test]
async fn the_live_page_shows_the_budget_tree_workloads_and_changes_as_the_simulation_runs() {
    let dir = test_dir("web");
    // 400× real time: the demand-response window opens 6 s in, the late training job arrives at 13 s.
    let (_simulate, url) = start_simulate(
        &["--speed", "400", "--port", "0", "--hold"],
        &dir.join("simulate.log"),
    );
    let port = free_port();
    let _driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromedriver.log")).expect("chromedriver log"))
            .spawn()
            .expect("chromedriver starts (Debian package chromium-driver)"),
    );
    eventually("chromedriver listens", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let profile = dir.join("chromium-profile");
    let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
        "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1300,1400", format!("--user-data-dir={}", profile.display())]}}}});
    let session = webdriver(port, "POST", "/session", Some(capabilities)).await;
    let session = session["sessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    webdriver(
        port,
        "POST",
        &format!("/session/{session}/url"),
        Some(json!({ "url": url })),
    )
    .await;

    let budgets = eventually("the budget tree", Duration::from_secs(30), || async {
        let names = script(port, &session,
            "return Array.from(document.querySelectorAll('[data-budget]')).map(e => e.dataset.budget)").await;
        match names.as_array() {
            Some(names) if names.len() == 7 => Ok(names.clone()),
            _ => Err(format!("budgets on the page: {names}")),
        }
    })
    .await;
    assert_eq!(
        budgets[0], "facility",
        "the root comes first, its rows and racks inside it"
    );
    let nested = script(
        port,
        &session,
        "const inside = (outer, inner) => document.querySelector(`[data-budget=\"${outer}\"]`)
             .contains(document.querySelector(`[data-budget=\"${inner}\"]`));
         return inside('facility', 'row-b') && inside('row-a', 'rack-a2') && !inside('row-a', 'rack-b1');",
    )
    .await;
    assert_eq!(nested, json!(true), "racks sit inside their rows");
    let facility = script(
        port,
        &session,
        "const b = document.querySelector('[data-budget=\"facility\"]');
         return [b.querySelector('.cap').textContent, b.querySelector('.allocated-watts').textContent,
                 b.querySelector('.bar .allocated').style.width];",
    )
    .await;
    assert_eq!(facility[0], "150.0 kW", "{facility}");
    assert!(
        facility[1].as_str().is_some_and(|t| t.ends_with(" kW")),
        "{facility}"
    );
    assert!(
        facility[2].as_str().is_some_and(|w| w.ends_with('%')),
        "{facility}"
    );

    let workloads = script(port, &session,
        "return Array.from(document.querySelectorAll('#workloads tr')).map(r => [r.dataset.workload, r.querySelector('.kind').textContent, r.querySelector('.limit').textContent])").await;
    let workloads = workloads.as_array().expect("rows").clone();
    assert_eq!(workloads.len(), 7, "{workloads:?}");
    assert!(
        workloads
            .iter()
            .any(|w| w[0] == "ml/chat-b" && w[1] == "inference"),
        "{workloads:?}"
    );
    assert!(
        workloads
            .iter()
            .all(|w| w[2].as_str().and_then(|l| l.parse::<f64>().ok()).is_some()),
        "{workloads:?}"
    );
    let method = script(
        port,
        &session,
        "return document.querySelector('[data-field=\"method\"]').textContent",
    )
    .await;
    assert!(
        ["greedy", "milp"].contains(&method.as_str().unwrap_or_default()),
        "{method}"
    );

    // Updating live: the dip shows as a change with its reason, the facility's cap falls with it.
    let revision_before = script(port, &session, "return document.body.dataset.revision").await;
    let dip = eventually("the demand-response dip", Duration::from_secs(40), || async {
        let changes = script(port, &session,
            "return Array.from(document.querySelectorAll('#changes li')).map(li => li.textContent)").await;
        let found = changes.as_array().and_then(|c| {
            c.iter()
                .filter_map(Value::as_str)
                .find(|t| t.contains("window demand-response opened"))
                .map(str::to_owned)
        });
        found.ok_or_else(|| format!("changes: {changes}"))
    })
    .await;
    assert!(dip.contains("cap of facility 150.0 kW → 90.0 kW"), "{dip}");
    let revision_after = script(port, &session, "return document.body.dataset.revision").await;
    assert_ne!(revision_before, revision_after);
    eventually(
        "the late training job arrives",
        Duration::from_secs(40),
        || async {
            let rows = script(
                port,
                &session,
                "return document.querySelectorAll('#workloads tr').length",
            )
            .await;
            (rows == json!(8))
                .then_some(())
                .ok_or(format!("{rows} rows"))
        },
    )
    .await;
    let runs = script(port, &session,
        "return Array.from(document.querySelectorAll('#runs tr')).map(r => [r.dataset.run, r.lastChild.textContent])").await;
    let runs = runs.as_array().expect("runs").clone();
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert_eq!(runs[0], json!(["kilowatt", "0"]), "no tick over a cap");
    assert_eq!(runs[4], json!(["oracle", "0"]), "no tick over a cap");

    // The charts, once the run is over and the data stands still: what the DOM draws against what the
    // API holds, read by the page itself in one script so both are the same instant's.
    eventually(
        "the simulation finishes",
        Duration::from_secs(60),
        || async {
            let clock = script(
                port,
                &session,
                "return document.getElementById('clock').textContent",
            )
            .await;
            let text = clock.as_str().unwrap_or_default().to_owned();
            text.contains("(finished)").then_some(()).ok_or(text)
        },
    )
    .await;
    let drawn = eventually(
        "the charts draw the overview",
        Duration::from_secs(10),
        || async {
            let drawn = script(port, &session, CHARTS_AGAINST_THE_API).await;
            (drawn["drawn"] == drawn["api"])
                .then(|| drawn.clone())
                .ok_or(format!("{drawn}"))
        },
    )
    .await;
    let api = &drawn["api"];
    let samples = api["history"]["cap"].as_u64().unwrap_or_default();
    assert!(samples > 10, "the live chart has a line of samples: {api}");
    assert_eq!(
        api["history"]["throughput"].as_u64(),
        Some(samples),
        "{api}"
    );
    assert!(
        api["history"]["measured"].as_u64().is_some_and(|m| m > 0),
        "measured watts are drawn: {api}"
    );
    let learned: u64 = api["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .map(|w| w[1].as_u64().unwrap_or_default())
        .sum();
    assert!(learned > 0, "some curve was learned and drawn: {api}");
    assert!(
        api["workloads"]
            .as_array()
            .expect("workloads")
            .iter()
            .all(|w| w[3] == json!(true)),
        "every workload row draws its declared curve and limit: {api}"
    );

    let png = webdriver(port, "GET", &format!("/session/{session}/screenshot"), None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("base64 screenshot"))
        .expect("decodes");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 20_000, "{} bytes", png.len());
    let shot = dir.join("page.png");
    std::fs::write(&shot, &png).expect("screenshot written");
    let _ = writeln!(
        std::io::stderr(),
        "web: screenshot of the live page in {}",
        shot.display()
    );
    webdriver(port, "DELETE", &format!("/session/{session}"), None).await;
}
