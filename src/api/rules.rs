//! Who may call each operation: one rule per operation id, the one table the
//! gate (`gate`) enforces and the OpenAPI document declares (`security`, an
//! `x-tidings-access` extension, and a line in each description). An
//! operation without a rule is refused to everyone but `Open`, and the
//! access matrix test fails on it.

use serde_json::{json, Value};

use crate::access::Grant;
use crate::domain::Scope;

/// Who may call one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// No credential needed (health, docs, the spec).
    pub public: bool,
    /// A key holding any one of these may call it on anything.
    pub scopes: &'static [Scope],
    /// A key with `send` may call it on the notifications it sent (the
    /// handler checks which).
    pub own_sends: bool,
    /// A user token with this grant may call it on its own user (`{user}`
    /// in the path) or on its own notifications (the handler checks).
    pub user: Option<Grant>,
}

const fn keys(scopes: &'static [Scope]) -> Rule {
    Rule {
        public: false,
        scopes,
        own_sends: false,
        user: None,
    }
}

const PUBLIC: Rule = Rule {
    public: true,
    scopes: &[],
    own_sends: false,
    user: None,
};

const ADMIN: Rule = keys(&[Scope::Admin]);

/// Any server key: settings every backend reads (categories, tenants).
const ANY_KEY: Rule = keys(&[Scope::Read, Scope::Send, Scope::Admin]);

/// Reading one notification: `read` keys, the key that sent it, its recipient.
const SEE_NOTIFICATION: Rule = Rule {
    public: false,
    scopes: &[Scope::Read],
    own_sends: true,
    user: Some(Grant::Read),
};

/// A lifecycle command: the key that sent it, its recipient.
const CHANGE_NOTIFICATION: Rule = Rule {
    public: false,
    scopes: &[],
    own_sends: true,
    user: Some(Grant::Write),
};

/// Delivery reports and cancelling: only the key that sent it.
const SENDER_ONLY: Rule = Rule {
    public: false,
    scopes: &[],
    own_sends: true,
    user: None,
};

/// Describing a recipient: the backend that sends to them, or the user
/// (not their tenant: the handler refuses that field to a user token).
const DESCRIBE_RECIPIENT: Rule = Rule {
    public: false,
    scopes: &[Scope::Send, Scope::Admin],
    own_sends: false,
    user: Some(Grant::Write),
};

/// Every operation's rule, by operation id.
pub const RULES: &[(&str, Rule)] = &[
    ("live", PUBLIC),
    ("ready", PUBLIC),
    ("docs", PUBLIC),
    ("openapi", PUBLIC),
    ("metrics", keys(&[Scope::Read, Scope::Admin])),
    ("createNotification", keys(&[Scope::Send])),
    ("getNotification", SEE_NOTIFICATION),
    ("notificationEvents", SEE_NOTIFICATION),
    ("deliver", SENDER_ONLY),
    ("failDelivery", SENDER_ONLY),
    ("explain", SEE_NOTIFICATION),
    ("cancel", SENDER_ONLY),
    ("markRead", CHANGE_NOTIFICATION),
    ("markUnread", CHANGE_NOTIFICATION),
    ("markSeen", CHANGE_NOTIFICATION),
    ("click", CHANGE_NOTIFICATION),
    ("archive", CHANGE_NOTIFICATION),
    ("unarchive", CHANGE_NOTIFICATION),
    ("deleteNotification", CHANGE_NOTIFICATION),
    (
        "getInbox",
        Rule {
            public: false,
            scopes: &[Scope::Read],
            own_sends: false,
            user: Some(Grant::Read),
        },
    ),
    (
        "bulkInbox",
        Rule {
            public: false,
            scopes: &[],
            own_sends: false,
            user: Some(Grant::Write),
        },
    ),
    (
        "readAll",
        Rule {
            public: false,
            scopes: &[],
            own_sends: false,
            user: Some(Grant::Write),
        },
    ),
    (
        "stream",
        Rule {
            public: false,
            scopes: &[Scope::Read],
            own_sends: false,
            user: Some(Grant::Read),
        },
    ),
    (
        "getRecipient",
        Rule {
            public: false,
            scopes: &[Scope::Read, Scope::Send],
            own_sends: false,
            user: Some(Grant::Read),
        },
    ),
    ("replaceRecipient", DESCRIBE_RECIPIENT),
    ("patchRecipient", DESCRIBE_RECIPIENT),
    (
        "getPreferences",
        Rule {
            public: false,
            scopes: &[Scope::Read, Scope::Send],
            own_sends: false,
            user: Some(Grant::Read),
        },
    ),
    ("setPreferences", DESCRIBE_RECIPIENT),
    ("listCategories", ANY_KEY),
    ("getCategory", ANY_KEY),
    ("configureCategory", ADMIN),
    ("getBatching", ANY_KEY),
    (
        "listUserBatches",
        Rule {
            public: false,
            scopes: &[Scope::Read],
            own_sends: false,
            user: Some(Grant::Read),
        },
    ),
    ("getBatch", keys(&[Scope::Read])),
    ("flushBatch", keys(&[Scope::Send, Scope::Admin])),
    ("setBatching", ADMIN),
    ("turnOffBatching", ADMIN),
    ("simulateBatching", keys(&[Scope::Read, Scope::Admin])),
    ("listTemplates", ANY_KEY),
    ("getTemplate", ANY_KEY),
    ("getTemplateVersion", ANY_KEY),
    ("addTemplateVersion", ADMIN),
    ("publishTemplateVersion", ADMIN),
    ("rollBackTemplate", ADMIN),
    // Rendering changes nothing: whoever sends may try it.
    ("previewTemplate", ANY_KEY),
    ("defineExperiment", ADMIN),
    ("getExperiment", ANY_KEY),
    ("startExperiment", ADMIN),
    ("pauseExperiment", ADMIN),
    ("concludeExperiment", ADMIN),
    ("setExperimentWeights", ADMIN),
    ("defineExperimentMetric", ADMIN),
    ("getExperimentResults", keys(&[Scope::Read, Scope::Admin])),
    ("getTenantDefaults", ANY_KEY),
    ("setTenantDefaults", keys(&[Scope::Send, Scope::Admin])),
    // Who is in a topic is the service's to decide; leaving one is the
    // user's right.
    ("subscribe", keys(&[Scope::Send, Scope::Admin])),
    (
        "unsubscribe",
        Rule {
            public: false,
            scopes: &[Scope::Send, Scope::Admin],
            own_sends: false,
            user: Some(Grant::Write),
        },
    ),
    ("listSubscribers", ANY_KEY),
    (
        "getSend",
        Rule {
            public: false,
            scopes: &[Scope::Read],
            own_sends: true,
            user: None,
        },
    ),
    ("getAnalytics", keys(&[Scope::Read])),
    ("getHealthScore", keys(&[Scope::Read])),
    ("events", ADMIN),
    ("exportEvents", ADMIN),
    ("projections", ADMIN),
    ("parkedEvents", ADMIN),
    ("redriveParked", ADMIN),
    ("skipParked", ADMIN),
    ("rebuildProjection", ADMIN),
    ("createKey", ADMIN),
    ("listKeys", ADMIN),
    ("revokeKey", ADMIN),
    ("issueUserToken", keys(&[Scope::Send, Scope::Admin])),
];

/// The rule of `operation`, if it has one.
pub fn rule(operation: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|(id, _)| *id == operation)
        .map(|(_, r)| r)
}

/// The security scheme every protected operation names.
pub const SCHEME: &str = "bearer";

impl Rule {
    /// The rule in words, for the operation's description.
    pub fn describe(&self) -> String {
        if self.public {
            return "no credential needed".into();
        }
        let mut who: Vec<String> = self
            .scopes
            .iter()
            .map(|s| format!("an API key with `{s}`"))
            .collect();
        if self.own_sends {
            who.push("the `send` key that created the notification".into());
        }
        match self.user {
            Some(Grant::Read) => who.push("the user's own token".into()),
            Some(Grant::Write) => who.push("the user's own token (grant `write`)".into()),
            None => {}
        }
        who.join("; or ")
    }

    fn extension(&self) -> Value {
        json!({
            "public": self.public,
            "scopes": self.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "own_sends": self.own_sends,
            "user": self.user,
        })
    }
}

/// Declares each operation's rule in the document: `security` (none for a
/// public one), `x-tidings-access`, the rule in words, and the 401, 403 and
/// 429 answers a protected operation can give.
pub fn declare(document: &mut Value) {
    document["components"]["securitySchemes"][SCHEME] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "A server API key (`tdk_…`, from `tidings keys create` or `POST /v1/keys`) or a user token (a JWT from `POST /v1/users/{user}/token` or signed by your backend).",
    });
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        })
    };
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let Some(id) = operation["operationId"].as_str().map(str::to_owned) else {
                continue;
            };
            let Some(rule) = rule(&id) else { continue };
            operation["x-tidings-access"] = rule.extension();
            let described = operation["description"].as_str().unwrap_or("").to_owned();
            operation["description"] = Value::String(
                format!("{described}\n\n**Access:** {}.", rule.describe())
                    .trim()
                    .to_owned(),
            );
            if rule.public {
                operation["security"] = json!([]);
                continue;
            }
            operation["security"] = json!([{ SCHEME: [] }]);
            let responses = &mut operation["responses"];
            responses["401"] = problem(
                "No credential, or one that is not valid (unknown or revoked key, expired or forged token). `WWW-Authenticate` says which.",
            );
            responses["403"] = problem(
                "The credential is valid but lacks the right to this operation or this resource.",
            );
            responses["429"] =
                problem("Past the credential's rate limit; `Retry-After` says when to try again.");
        }
    }
}
