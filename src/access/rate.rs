//! Rate limits per principal: each API key and each user (all of a user's
//! tokens share one allowance) may make `per_second` requests a second on
//! average, in bursts of up to `burst`. A key's allowance is that of the
//! most generous scope it holds; user tokens have their own. `Open` (no
//! credentials configured) is not limited.
//!
//! One algorithm, GCRA, in two places: governor's in-process limiter, and,
//! when Redis is configured, a Lua script that keeps each principal's
//! theoretical arrival time in Redis under Redis's own clock, so the
//! allowance holds across instances. When Redis does not answer, each
//! instance falls back to its own limiter rather than refuse or wave
//! everything through.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use tracing::warn;

use super::Principal;
use crate::domain::Scope;

/// An allowance: `per_second` on average (at most `MAX_PER_SECOND`), up to
/// `burst` at once. Zero `per_second`: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub per_second: u32,
    pub burst: u32,
}

/// What the limiter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The burst size (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests that may still be made at once (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the allowance is whole again (`RateLimit-Reset`).
    pub reset_secs: u64,
    /// Set when refused: how long until a request is allowed (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The average rate, for `RateLimit-Policy`.
    pub per_second: u32,
}

/// The highest average rate: Redis keeps times in microseconds, so one
/// request a microsecond.
pub const MAX_PER_SECOND: u32 = 1_000_000;

type Local = DefaultKeyedRateLimiter<String, StateInformationMiddleware>;

struct Class {
    name: &'static str,
    allowance: Allowance,
    local: Local,
}

impl Class {
    fn new(name: &'static str, allowance: Allowance) -> Option<Self> {
        let per_second = NonZeroU32::new(allowance.per_second.min(MAX_PER_SECOND))?;
        let burst = NonZeroU32::new(allowance.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Some(Self {
            name,
            allowance: Allowance {
                per_second: per_second.get(),
                burst: burst.get(),
            },
            local: governor::RateLimiter::keyed(quota)
                .with_middleware::<StateInformationMiddleware>(),
        })
    }

    fn reset_after(&self, remaining: u32) -> u64 {
        let missing = self.allowance.burst.saturating_sub(remaining) as u64;
        missing.div_ceil(self.allowance.per_second as u64)
    }

    fn check_locally(&self, who: &str) -> Verdict {
        let key = who.to_owned();
        match self.local.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                self.verdict(remaining, None)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                self.verdict(0, Some(wait))
            }
        }
    }

    fn verdict(&self, remaining: u32, retry_after: Option<Duration>) -> Verdict {
        Verdict {
            limit: self.allowance.burst,
            remaining,
            reset_secs: self.reset_after(remaining),
            retry_after,
            per_second: self.allowance.per_second,
        }
    }
}

/// GCRA over Redis. KEYS[1]: the principal's key; ARGV[1]: the emission
/// interval (µs); ARGV[2]: the burst tolerance (µs, interval × (burst − 1)).
/// Answers {allowed (1/0), µs until allowed, µs until the allowance is whole}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, tat - tolerance - now, tat - now}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, 0, next_tat - now}
"#;

struct Shared {
    client: Client,
    script: Script,
    namespace: String,
    /// Whether the last call failed (logged once per outage).
    failing: AtomicBool,
    /// Until when (ms since 1970) Redis is not asked after a failure: while
    /// it is down, requests must not each wait out its timeout.
    skip_until_ms: AtomicI64,
}

/// How long Redis is left alone after a failed call.
const REDIS_BACKOFF_MS: i64 = 5_000;

/// Every class's limiter.
pub struct RateLimits {
    send: Option<Class>,
    read: Option<Class>,
    admin: Option<Class>,
    user: Option<Class>,
    shared: Option<Shared>,
}

/// Each class's allowance.
#[derive(Debug, Clone, Copy)]
pub struct Allowances {
    pub send: Allowance,
    pub read: Allowance,
    pub admin: Allowance,
    pub user: Allowance,
}

impl RateLimits {
    pub fn new(allowances: Allowances) -> Self {
        Self {
            send: Class::new("send", allowances.send),
            read: Class::new("read", allowances.read),
            admin: Class::new("admin", allowances.admin),
            user: Class::new("user", allowances.user),
            shared: None,
        }
    }

    /// Keeps the allowances in Redis (`client`, connected), under keys
    /// starting with `namespace`, so that they hold across instances.
    pub fn shared(mut self, client: Client, namespace: String) -> Self {
        self.shared = Some(Shared {
            client,
            script: Script::from_lua(GCRA),
            namespace,
            failing: AtomicBool::new(false),
            skip_until_ms: AtomicI64::new(0),
        });
        self
    }

    fn class(&self, principal: &Principal) -> Option<&Class> {
        match principal {
            Principal::Open | Principal::Nobody => None,
            Principal::User(_) => self.user.as_ref(),
            Principal::Key(key) => {
                let mut best: Option<&Class> = None;
                for scope in &key.scopes {
                    let class = match scope {
                        Scope::Send => &self.send,
                        Scope::Read => &self.read,
                        Scope::Admin => &self.admin,
                    };
                    // A scope without a limit makes the key unlimited.
                    let class = class.as_ref()?;
                    if best.is_none_or(|b| b.allowance.per_second < class.allowance.per_second) {
                        best = Some(class);
                    }
                }
                best
            }
        }
    }

    /// Takes one request from `principal`'s allowance. None: not limited.
    pub async fn check(&self, principal: &Principal) -> Option<Verdict> {
        let class = self.class(principal)?;
        let who = principal.actor();
        let now_ms = chrono::Utc::now().timestamp_millis();
        if let Some(shared) = self
            .shared
            .as_ref()
            .filter(|s| s.skip_until_ms.load(Ordering::Relaxed) <= now_ms)
        {
            match self.check_shared(shared, class, &who).await {
                Ok(verdict) => {
                    if shared.failing.swap(false, Ordering::Relaxed) {
                        warn!("Redis answers again; rate limits hold across instances again");
                    }
                    return Some(verdict);
                }
                Err(e) => {
                    shared
                        .skip_until_ms
                        .store(now_ms + REDIS_BACKOFF_MS, Ordering::Relaxed);
                    if !shared.failing.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "Redis does not answer; each instance limits rates on its own until it does");
                    }
                }
            }
        }
        Some(class.check_locally(&who))
    }

    async fn check_shared(&self, shared: &Shared, class: &Class, who: &str) -> FredResult<Verdict> {
        let interval_us = 1_000_000 / class.allowance.per_second as i64;
        let tolerance_us = interval_us * (class.allowance.burst as i64 - 1);
        let key = format!("{}:rate:{}:{who}", shared.namespace, class.name);
        let answer: Vec<i64> = shared
            .script
            .evalsha_with_reload(&shared.client, key, vec![interval_us, tolerance_us])
            .await?;
        let [allowed, wait_us, full_us] = answer[..] else {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Parse,
                "the rate script answered an unexpected shape",
            ));
        };
        let reset_secs = (full_us.max(0) as u64).div_ceil(1_000_000);
        if allowed == 1 {
            // Further requests allowed at once after this one.
            let remaining =
                ((tolerance_us + interval_us - full_us).max(0) / interval_us.max(1)) as u32;
            Ok(Verdict {
                reset_secs,
                ..class.verdict(remaining.min(class.allowance.burst), None)
            })
        } else {
            Ok(Verdict {
                reset_secs,
                ..class.verdict(0, Some(Duration::from_micros(wait_us.max(0) as u64)))
            })
        }
    }

    /// Forgets the principals whose allowance is whole again, every minute
    /// until `shutdown`: memory stays bounded by the principals active lately.
    pub async fn forget_idle(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    for class in [&self.send, &self.read, &self.admin, &self.user].into_iter().flatten() {
                        class.local.retain_recent();
                    }
                }
            }
        }
    }
}
