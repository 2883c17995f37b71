//! `[dashboard]`: what the built-in page shows for the topics it receives: a
//! title, groups in their order, and `[[dashboard.rule]]` entries, each
//! giving the topics its MQTT filter matches a label, a unit, decimals, an
//! expected range, warning and alarm thresholds, a group, or a control.
//!
//! In the config file itself rather than a file it names: one file that
//! `check-config` validates and a reload re-reads, every mistake named
//! `dashboard.…` in the same report as the rest, no second path or
//! permission to get wrong.
//!
//! Every rule whose filter matches a topic contributes the keys it sets; an
//! earlier rule wins a key both set (so `sensors/kitchen/#` can give the
//! group and `+/+/temperature` the unit). The page applies them
//! (`src/dashboard/app.mjs`); the server only validates and serves them.

use toml::{Table, Value as Toml};

use super::keys::{problem, show, Section};
use super::Problem;
use edgepush_protocol::topic;

/// The most rules: the page matches every topic against each of them.
pub const MAX_RULES: usize = 512;
/// The most decimals a value is shown with.
pub const MAX_DECIMALS: i64 = 6;

/// `[dashboard]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    /// The page's heading and window title.
    pub title: String,
    /// Groups in the order the page shows them; with none written, the order
    /// in which the rules first name them.
    pub groups: Vec<String>,
    /// `[[dashboard.rule]]`, in file order.
    pub rules: Vec<Rule>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard { title: "edgepush".into(), groups: Vec::new(), rules: Vec::new() }
    }
}

/// What a control sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// On and off: `payload-on` / `payload-off`.
    Switch,
    /// A number typed in, sent as text.
    Number,
}

impl Control {
    pub fn name(self) -> &'static str {
        match self {
            Control::Switch => "switch",
            Control::Number => "number",
        }
    }
}

/// One `[[dashboard.rule]]`. Only `filter` is required.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    pub filter: String,
    pub label: Option<String>,
    pub unit: Option<String>,
    pub decimals: Option<u8>,
    /// The expected range: the tile's bar spans it.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub warning_above: Option<f64>,
    pub alarm_above: Option<f64>,
    pub warning_below: Option<f64>,
    pub alarm_below: Option<f64>,
    pub group: Option<String>,
    pub control: Option<Control>,
    /// Where the control publishes; unset: the topic the tile shows.
    pub publish_topic: Option<String>,
    /// What a switch sends (defaults "1" and "0").
    pub payload_on: Option<String>,
    pub payload_off: Option<String>,
}

/// The keys of `[dashboard]` and of a rule, as written in the file.
#[cfg(test)]
pub(crate) const KEYS: &[&str] = &["title", "groups", "rule"];
#[cfg(test)]
pub(crate) const RULE_KEYS: &[&str] = &[
    "filter",
    "label",
    "unit",
    "decimals",
    "min",
    "max",
    "warning-above",
    "alarm-above",
    "warning-below",
    "alarm-below",
    "group",
    "control",
    "publish-topic",
    "payload-on",
    "payload-off",
];

/// Takes `[dashboard]` out of its table, every problem under `dashboard.…`.
pub(super) fn parse(value: Toml, problems: &mut Vec<Problem>) -> Dashboard {
    let mut d = Dashboard::default();
    let Toml::Table(table) = value else {
        problems.push(problem("dashboard", format!("must be a table, got {}", show(&value))));
        return d;
    };
    let mut s = Section { name: "dashboard", table, problems };
    s.string("title", &mut d.title);
    groups(&mut s, &mut d.groups);
    // `groups = []` means what leaving it out means: the rules' order.
    let groups_written = !d.groups.is_empty();
    let rules = s.table.remove("rule");
    s.finish();
    let Some(rules) = rules else { return d };
    let Toml::Array(items) = rules else {
        let reason = format!("must be an array of tables ([[dashboard.rule]]), got {}", show(&rules));
        problems.push(problem("dashboard.rule", reason));
        return d;
    };
    if items.len() > MAX_RULES {
        problems.push(problem("dashboard.rule", format!("at most {MAX_RULES} rules, got {}", items.len())));
    }
    for (i, item) in items.into_iter().enumerate().take(MAX_RULES) {
        let key = format!("dashboard.rule[{i}]");
        let Toml::Table(table) = item else {
            problems.push(problem(&key, format!("must be a table, got {}", show(&item))));
            continue;
        };
        let before = problems.len();
        let r = rule(table, problems);
        // The entry's own keys are named under its index.
        for p in &mut problems[before..] {
            p.key = format!("{key}.{}", p.key);
        }
        if let Some(g) = &r.group {
            if groups_written && !d.groups.contains(g) {
                problems.push(problem(&format!("{key}.group"), format!("{g:?} is not in dashboard.groups")));
            } else if !d.groups.contains(g) {
                d.groups.push(g.clone());
            }
        }
        d.rules.push(r);
    }
    d
}

/// `groups`: distinct, non-empty names.
fn groups(s: &mut Section<'_>, slot: &mut Vec<String>) {
    let Some(v) = s.table.remove("groups") else { return };
    let Toml::Array(items) = v else {
        return s.bad("groups", format!("must be a list of group names, got {}", show(&v)));
    };
    for (i, item) in items.into_iter().enumerate() {
        let k = format!("groups[{i}]");
        match item {
            Toml::String(g) if g.trim().is_empty() => s.bad(&k, "must not be empty".into()),
            Toml::String(g) if slot.contains(&g) => s.bad(&k, format!("{g:?} is listed twice")),
            Toml::String(g) => slot.push(g),
            other => s.bad(&k, format!("must be a string, got {}", show(&other))),
        }
    }
}

fn rule(table: Table, problems: &mut Vec<Problem>) -> Rule {
    let mut r = Rule::default();
    let mut s = Section { name: "", table, problems };
    let mut filter = None;
    s.opt_string("filter", &mut filter);
    match filter {
        None => s.bad("filter", "is required: the MQTT filter of the topics the rule is for".into()),
        Some(f) => match topic::validate_filter(&f) {
            Ok(()) => r.filter = f,
            Err(e) => s.bad("filter", format!("bad MQTT filter {f:?}: {e}")),
        },
    }
    s.opt_string("label", &mut r.label);
    s.opt_string("unit", &mut r.unit);
    if s.table.contains_key("decimals") {
        let mut n = 0u8;
        s.int("decimals", 0, MAX_DECIMALS, &mut n);
        r.decimals = Some(n);
    }
    for (k, slot) in [
        ("min", &mut r.min),
        ("max", &mut r.max),
        ("warning-above", &mut r.warning_above),
        ("alarm-above", &mut r.alarm_above),
        ("warning-below", &mut r.warning_below),
        ("alarm-below", &mut r.alarm_below),
    ] {
        number(&mut s, k, slot);
    }
    s.opt_string("group", &mut r.group);
    if r.group.as_ref().is_some_and(|g| g.trim().is_empty()) {
        s.bad("group", "must not be empty".into());
        r.group = None;
    }
    let mut control = None;
    s.opt_string("control", &mut control);
    match control.as_deref() {
        None => {}
        Some("switch") => r.control = Some(Control::Switch),
        Some("number") => r.control = Some(Control::Number),
        Some(other) => s.bad("control", format!("must be \"switch\" or \"number\", got {other:?}")),
    }
    let written = |s: &Section<'_>, k| s.table.contains_key(k);
    let needs_control = written(&s, "publish-topic") && control.is_none();
    let needs_switch = ["payload-on", "payload-off"].map(|k| written(&s, k) && r.control != Some(Control::Switch));
    s.opt_string("publish-topic", &mut r.publish_topic);
    if let Some(t) = &r.publish_topic {
        if let Err(e) = topic::validate_topic(t) {
            s.bad("publish-topic", format!("bad MQTT topic {t:?}: {e}"));
        }
    }
    s.opt_string("payload-on", &mut r.payload_on);
    s.opt_string("payload-off", &mut r.payload_off);
    if needs_control {
        s.bad("publish-topic", "is for a control: set control = \"switch\" or \"number\" too".into());
    }
    for (k, bad) in ["payload-on", "payload-off"].into_iter().zip(needs_switch) {
        if bad && control.is_some() {
            s.bad(k, "is for control = \"switch\" only".into());
        } else if bad {
            s.bad(k, "is for a switch: set control = \"switch\" too".into());
        }
    }
    s.finish();
    // Across keys, each named by the key that contradicts the other.
    let mut cross = |k: &str, a: Option<f64>, other: &str, b: Option<f64>, wrong: fn(f64, f64) -> bool, rule: &str| {
        if let (Some(a), Some(b)) = (a, b) {
            if wrong(a, b) {
                problems.push(problem(k, format!("{rule} {other} ({a} vs {b})")));
            }
        }
    };
    cross("max", r.max, "min", r.min, |a, b| a <= b, "must be above");
    cross("alarm-above", r.alarm_above, "warning-above", r.warning_above, |a, b| a < b, "must not be below");
    cross("alarm-below", r.alarm_below, "warning-below", r.warning_below, |a, b| a > b, "must not be above");
    r
}

/// A finite number, integer or not.
fn number(s: &mut Section<'_>, k: &str, slot: &mut Option<f64>) {
    match s.table.remove(k) {
        None => {}
        Some(Toml::Integer(i)) => *slot = Some(i as f64),
        Some(Toml::Float(f)) if f.is_finite() => *slot = Some(f),
        Some(other) => s.bad(k, format!("must be a number, got {}", show(&other))),
    }
}

impl Dashboard {
    /// The section as TOML for `check-config`; None while it is the default.
    pub(super) fn render(&self) -> Option<Toml> {
        if *self == Dashboard::default() {
            return None;
        }
        let mut t = Table::new();
        t.insert("title".into(), self.title.clone().into());
        if !self.groups.is_empty() {
            t.insert("groups".into(), Toml::Array(self.groups.iter().map(|g| g.clone().into()).collect()));
        }
        let rules = self.rules.iter().map(|r| {
            let mut e = Table::new();
            e.insert("filter".into(), r.filter.clone().into());
            for (k, v) in r.texts() {
                e.insert(k.into(), v.into());
            }
            if let Some(n) = r.decimals {
                e.insert("decimals".into(), i64::from(n).into());
            }
            for (k, v) in r.numbers() {
                e.insert(k.into(), v.into());
            }
            Toml::Table(e)
        });
        if !self.rules.is_empty() {
            t.insert("rule".into(), Toml::Array(rules.collect()));
        }
        Some(Toml::Table(t))
    }
}

impl Rule {
    /// The text keys that are set, as written in the file.
    pub fn texts(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        [
            ("label", self.label.clone()),
            ("unit", self.unit.clone()),
            ("group", self.group.clone()),
            ("control", self.control.map(|c| c.name().to_owned())),
            ("publish-topic", self.publish_topic.clone()),
            ("payload-on", self.payload_on.clone()),
            ("payload-off", self.payload_off.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }

    /// The number keys that are set, as written in the file.
    pub fn numbers(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        [
            ("min", self.min),
            ("max", self.max),
            ("warning-above", self.warning_above),
            ("alarm-above", self.alarm_above),
            ("warning-below", self.warning_below),
            ("alarm-below", self.alarm_below),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const OPEN: &str = "\n[auth]\nmode = \"none\"\n";

    fn load(text: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(&format!("{text}{OPEN}"), "t", None)
            .map_err(|e| e.problems.into_iter().map(|p| format!("{}: {}", p.key, p.reason)).collect())
    }

    const GOOD: &str = r#"
        [dashboard]
        title = "Plant 3"
        groups = ["Living room", "Power"]
        [[dashboard.rule]]
        filter = "sensors/living-room/#"
        group = "Living room"
        [[dashboard.rule]]
        filter = "sensors/+/temperature"
        label = "Temperature"
        unit = "°C"
        decimals = 1
        min = 10
        max = 35.5
        warning-above = 26
        alarm-above = 30
        warning-below = 15
        alarm-below = 12
        [[dashboard.rule]]
        filter = "cmd/fan"
        control = "switch"
        publish-topic = "cmd/fan/set"
        payload-on = "ON"
        payload-off = "OFF"
    "#;

    #[test]
    fn a_whole_section_loads() {
        let d = load(GOOD).unwrap().dashboard;
        assert_eq!(d.title, "Plant 3");
        assert_eq!(d.groups, ["Living room", "Power"]);
        assert_eq!(d.rules.len(), 3);
        let t = &d.rules[1];
        assert_eq!((t.decimals, t.min, t.max, t.alarm_below), (Some(1), Some(10.0), Some(35.5), Some(12.0)));
        assert_eq!(t.unit.as_deref(), Some("°C"));
        assert_eq!(d.rules[2].control, Some(super::Control::Switch));
        assert_eq!(d.rules[2].payload_on.as_deref(), Some("ON"));
    }

    #[test]
    fn absent_it_is_the_default_and_written_it_shows_in_check_config() {
        let c = load("").unwrap();
        assert_eq!(c.dashboard, super::Dashboard::default());
        assert!(!c.to_toml_redacted().contains("dashboard"));
        let c = load(GOOD).unwrap();
        let shown = c.to_toml_redacted();
        assert!(shown.contains("[[dashboard.rule]]") && shown.contains("alarm-above = 30"), "{shown}");
        assert_eq!(Config::from_toml(&shown, "t", None).unwrap().dashboard, c.dashboard, "{shown}");
    }

    #[test]
    fn groups_without_a_list_come_in_the_order_rules_name_them() {
        let d = load(
            "[[dashboard.rule]]\nfilter = \"a/#\"\ngroup = \"B\"\n[[dashboard.rule]]\nfilter = \"b/#\"\ngroup = \"A\"\n\
             [[dashboard.rule]]\nfilter = \"c\"\ngroup = \"B\"\n",
        )
        .unwrap()
        .dashboard;
        assert_eq!(d.groups, ["B", "A"]);
        assert_eq!(d.title, "edgepush");
    }

    #[test]
    fn every_mistake_is_named_by_its_key() {
        let p = load(
            r#"
            [dashboard]
            title = 3
            groups = ["Room", "Room", "", 4]
            colour = "blue"
            [[dashboard.rule]]
            label = "no filter"
            [[dashboard.rule]]
            filter = "a/#/b"
            decimals = 9
            min = "low"
            max = nan
            unit = 5
            [[dashboard.rule]]
            filter = "x"
            min = 10
            max = 10
            warning-above = 30
            alarm-above = 20
            warning-below = 5
            alarm-below = 6
            group = "Kitchen"
            control = "slider"
            [[dashboard.rule]]
            filter = "y"
            publish-topic = "y/+/set"
            payload-on = "1"
            colour = 1
            [[dashboard.rule]]
            filter = "z"
            control = "number"
            payload-off = "0"
            group = " "
        "#,
        )
        .unwrap_err();
        let expected = [
            "dashboard.title: must be a string, got 3",
            "dashboard.groups[1]: \"Room\" is listed twice",
            "dashboard.groups[2]: must not be empty",
            "dashboard.groups[3]: must be a string, got 4",
            "dashboard.colour: unknown key",
            "dashboard.rule[0].filter: is required",
            "dashboard.rule[1].filter: bad MQTT filter \"a/#/b\"",
            "dashboard.rule[1].unit: must be a string, got 5",
            "dashboard.rule[1].decimals: must be an integer from 0 to 6, got 9",
            "dashboard.rule[1].min: must be a number, got \"low\"",
            "dashboard.rule[1].max: must be a number, got nan",
            "dashboard.rule[2].control: must be \"switch\" or \"number\", got \"slider\"",
            "dashboard.rule[2].max: must be above min (10 vs 10)",
            "dashboard.rule[2].alarm-above: must not be below warning-above (20 vs 30)",
            "dashboard.rule[2].alarm-below: must not be above warning-below (6 vs 5)",
            "dashboard.rule[2].group: \"Kitchen\" is not in dashboard.groups",
            "dashboard.rule[3].publish-topic: bad MQTT topic \"y/+/set\"",
            "dashboard.rule[3].publish-topic: is for a control",
            "dashboard.rule[3].payload-on: is for a switch",
            "dashboard.rule[3].colour: unknown key",
            "dashboard.rule[4].group: must not be empty",
            "dashboard.rule[4].payload-off: is for control = \"switch\" only",
        ];
        for e in expected {
            assert!(p.iter().any(|x| x.starts_with(e)), "{e:?} missing from {p:#?}");
        }
        assert_eq!(p.len(), expected.len(), "{p:#?}");
    }

    #[test]
    fn not_tables_and_too_many_rules() {
        assert_eq!(load("dashboard = 1").unwrap_err(), ["dashboard: must be a table, got 1"]);
        let p = load("[dashboard]\nrule = 2\ngroups = \"A\"\n").unwrap_err();
        assert_eq!(
            p,
            [
                "dashboard.groups: must be a list of group names, got \"A\"",
                "dashboard.rule: must be an array of tables ([[dashboard.rule]]), got 2"
            ]
        );
        assert_eq!(load("[dashboard]\nrule = [1]\n").unwrap_err(), ["dashboard.rule[0]: must be a table, got 1"]);
        let many = "[[dashboard.rule]]\nfilter = \"#\"\n".repeat(super::MAX_RULES + 1);
        assert_eq!(load(&many).unwrap_err(), ["dashboard.rule: at most 512 rules, got 513"]);
    }

    #[test]
    fn a_reload_takes_the_new_section() {
        let old = load(GOOD).unwrap();
        let new = load("[dashboard]\ntitle = \"Renamed\"\n").unwrap();
        assert!(old.restart_needed(&new).is_empty());
        assert_eq!(old.reloaded(new).dashboard.title, "Renamed");
    }
}
