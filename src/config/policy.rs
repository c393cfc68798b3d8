//! Slow-subscriber policies per channel (`--channel-policy PATTERN=POLICY`): the rule type and
//! its parsing. What each policy does on the wire is in docs/PROTOCOL.md ("Slow subscribers").

use serde::Deserialize;

/// What a channel does with a subscriber whose send queue is over `max_backpressure` when
/// one of its deliveries arrives (docs/PROTOCOL.md, "Slow subscribers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Close the connection with 1008: it cannot keep up (the default).
    #[default]
    Disconnect,
    /// Keep the connection and drop the delivery: the subscriber sees a `seq` gap, which it
    /// can fill from history with `since`.
    Drop,
    /// Keep the connection; of the deliveries that arrive while it is over, keep only the
    /// latest per publisher `key` and send those when its queue is back under the bound.
    /// Deliveries without a key are dropped as with [`SlowPolicy::Drop`].
    Conflate,
}

impl std::str::FromStr for SlowPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<SlowPolicy, String> {
        match s {
            "disconnect" => Ok(SlowPolicy::Disconnect),
            "drop" => Ok(SlowPolicy::Drop),
            "conflate" => Ok(SlowPolicy::Conflate),
            _ => Err(format!("{s:?} is not disconnect, drop or conflate")),
        }
    }
}

/// One slow-subscriber rule, written `PATTERN=POLICY`: channels named `PATTERN` (or starting
/// with it, when it ends in `*`) get `POLICY`. The first matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ChannelPolicy {
    /// An exact channel name, or a prefix followed by `*` (`*` alone: every channel).
    pub pattern: String,
    /// What matching channels do with slow subscribers.
    pub policy: SlowPolicy,
}

impl ChannelPolicy {
    /// Whether the rule covers `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => self.pattern == channel,
        }
    }
}

impl std::str::FromStr for ChannelPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<ChannelPolicy, String> {
        let (pattern, policy) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not PATTERN=POLICY"))?;
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        // The channel-name alphabet (hub::wire::valid_channel); empty only before a `*`.
        let ok = name.len() <= 128
            && (!name.is_empty() || pattern == "*")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:/@-".contains(&b));
        if !ok {
            return Err(format!("{pattern:?} is not a channel name or prefix*"));
        }
        Ok(ChannelPolicy {
            pattern: pattern.to_owned(),
            policy: policy.parse()?,
        })
    }
}

impl TryFrom<String> for ChannelPolicy {
    type Error = String;

    fn try_from(s: String) -> Result<ChannelPolicy, String> {
        s.parse()
    }
}
