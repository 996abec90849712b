//! The model catalog in storage, on both backends: names are unique across ids and aliases,
//! a price in force never changes, org prices are kept apart, admin changes are audited in the
//! same transaction, seeding is idempotent.

use std::sync::Arc;

use credex_ledger::{ManualClock, Timestamp};
use credex_store::{
    AuditAction, AuditEntry, AuditFilter, ImportChange, ModelFilter, ModelRecord, ModelSource,
    OrgName, Plan, PriceRecord, PriceScope, PricingError, PutPrice, Store,
};
use credex_tests::{on_both_backends, TestDb};

const T0: Timestamp = Timestamp::from_micros(1_795_651_200_000_000);
const DAY: i64 = 86_400_000_000;

fn model(id: &str, aliases: &[&str]) -> ModelRecord {
    ModelRecord {
        id: id.to_owned(),
        provider: "openai".to_owned(),
        class: "pro".to_owned(),
        context_window: Some(128_000),
        aliases: aliases.iter().map(|&a| a.to_owned()).collect(),
        source: ModelSource::Admin,
        created_at: T0,
    }
}

fn price(from: Timestamp, input: &str) -> PriceRecord {
    PriceRecord {
        effective_from: from,
        price: format!(r#"{{"input":"{input}","output":"10"}}"#),
        recorded_at: T0,
        recorded_by: None,
    }
}

fn audit(action: &str) -> AuditEntry {
    AuditEntry::new(
        T0,
        AuditAction::parse(action).expect("an action"),
        "test",
        serde_json::json!({}),
    )
    .expect("an entry")
}

async fn audited(store: &dyn Store, action: &str) -> usize {
    let filter = AuditFilter {
        action: Some(AuditAction::parse(action).expect("an action")),
        actor: None,
        org: None,
        since: None,
        until: None,
    };
    store.audit(&filter, None, 100).await.expect("audit").len()
}

async fn names_are_unique(db: &TestDb) {
    let store = db.store(Arc::new(ManualClock::new(T0))).await;
    let store = store.as_ref();
    let prices = [price(T0, "2")];
    store
        .add_model(
            &model("gpt-x", &["gpt-x-2026"]),
            &prices,
            &audit("models.add"),
        )
        .await
        .expect("a new model");
    // An id that is an id, an id that is an alias, an alias that is an id: all refused, and
    // nothing of the refused model (nor its audit entry) is written.
    for (id, aliases) in [
        ("gpt-x", vec![]),
        ("gpt-x-2026", vec![]),
        ("gpt-y", vec!["gpt-x"]),
    ] {
        let refused = store
            .add_model(&model(id, &aliases), &prices, &audit("models.add"))
            .await;
        assert!(
            matches!(refused, Err(PricingError::NameTaken(_))),
            "{id}: {refused:?}"
        );
    }
    assert!(store.find_model("gpt-y").await.expect("find").is_none());
    assert_eq!(audited(store, "models.add").await, 1);

    let found = store.find_model("gpt-x-2026").await.expect("find");
    let found = found.expect("found by alias");
    assert_eq!(found.id, "gpt-x");
    assert_eq!(found.aliases, vec!["gpt-x-2026".to_owned()]);
    assert_eq!(
        store
            .prices("gpt-x", PriceScope::Catalog)
            .await
            .expect("prices"),
        prices.to_vec()
    );
}

async fn prices_in_force_never_change(db: &TestDb) {
    let store = db.store(Arc::new(ManualClock::new(T0))).await;
    let store = store.as_ref();
    store
        .add_model(&model("m", &[]), &[price(T0, "1")], &audit("models.add"))
        .await
        .expect("a model");
    let now = T0.plus_micros(DAY);
    let put = |p: PriceRecord, scope| async move {
        store
            .put_price("m", scope, &p, now, &audit("prices.put"))
            .await
    };
    // The past is refused; the price from T0 is in force and cannot be replaced.
    assert!(matches!(
        put(price(T0, "9"), PriceScope::Catalog).await,
        Err(PricingError::InThePast)
    ));
    // From now on: added; then it is in force (effective_from == now) and cannot change.
    assert_eq!(
        put(price(now, "2"), PriceScope::Catalog)
            .await
            .expect("put"),
        PutPrice::Added
    );
    assert!(matches!(
        put(price(now, "3"), PriceScope::Catalog).await,
        Err(PricingError::InForce)
    ));
    // A future price can be replaced until it takes effect.
    let later = now.plus_micros(7 * DAY);
    assert_eq!(
        put(price(later, "4"), PriceScope::Catalog)
            .await
            .expect("put"),
        PutPrice::Added
    );
    assert_eq!(
        put(price(later, "5"), PriceScope::Catalog)
            .await
            .expect("put"),
        PutPrice::Replaced
    );
    let schedule = store
        .prices("m", PriceScope::Catalog)
        .await
        .expect("prices");
    let inputs: Vec<(Timestamp, &str)> = schedule
        .iter()
        .map(|p| (p.effective_from, p.price.as_str()))
        .collect();
    assert_eq!(
        inputs,
        vec![
            (T0, r#"{"input":"1","output":"10"}"#),
            (now, r#"{"input":"2","output":"10"}"#),
            (later, r#"{"input":"5","output":"10"}"#),
        ]
    );
    // Unknown models are refused.
    assert!(matches!(
        store
            .put_price(
                "nope",
                PriceScope::Catalog,
                &price(later, "1"),
                now,
                &audit("prices.put")
            )
            .await,
        Err(PricingError::NoSuchModel(_))
    ));
    assert_eq!(audited(store, "prices.put").await, 3);

    // An org's prices are its own, and only for an org that exists.
    let org = store
        .create_org(&OrgName::parse("Acme").expect("a name"), Plan::Teams, T0)
        .await
        .expect("an org");
    assert_eq!(
        put(price(later, "0.5"), PriceScope::Org(org.id))
            .await
            .expect("put"),
        PutPrice::Added
    );
    let own = store
        .prices("m", PriceScope::Org(org.id))
        .await
        .expect("prices");
    assert_eq!(own.len(), 1);
    assert_eq!(
        store
            .prices("m", PriceScope::Catalog)
            .await
            .expect("prices")
            .len(),
        3
    );
    let other = credex_ledger::OrgId::generate();
    assert!(matches!(
        put(price(later, "0.5"), PriceScope::Org(other)).await,
        Err(PricingError::NoSuchOrg)
    ));

    // What pricing a call reads, in one statement: by id or alias, with the org's schedule.
    store
        .add_model(&model("bare", &["bare-latest"]), &[], &audit("models.add"))
        .await
        .expect("a model without prices");
    let froms = |records: &[PriceRecord]| -> Vec<Timestamp> {
        records.iter().map(|p| p.effective_from).collect()
    };
    let found = store
        .model_for_pricing("m", Some(org.id))
        .await
        .expect("read")
        .expect("found");
    assert_eq!(found.model.id, "m");
    assert_eq!(froms(&found.catalog), vec![T0, now, later]);
    assert_eq!(found.org, own);
    let catalog_only = store
        .model_for_pricing("m", None)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(catalog_only.catalog, found.catalog);
    assert!(catalog_only.org.is_empty());
    let bare = store
        .model_for_pricing("bare-latest", Some(org.id))
        .await
        .expect("read")
        .expect("found by alias");
    assert_eq!(bare.model.id, "bare");
    assert!(bare.catalog.is_empty() && bare.org.is_empty());
    assert_eq!(
        store.model_for_pricing("nope", None).await.expect("read"),
        None
    );
}

async fn seeding_is_idempotent_and_imports_skip_what_exists(db: &TestDb) {
    let store = db.store(Arc::new(ManualClock::new(T0))).await;
    let store = store.as_ref();
    let seed: Vec<(ModelRecord, Vec<PriceRecord>)> = (0..30)
        .map(|i| {
            let mut m = model(&format!("model-{i:02}"), &[&format!("alias-{i:02}")]);
            m.source = ModelSource::Builtin;
            if i % 3 == 0 {
                m.provider = "anthropic".to_owned();
            }
            (m, vec![price(T0, "1")])
        })
        .collect();
    assert_eq!(store.seed_models(&seed).await.expect("seed"), 30);
    assert_eq!(store.seed_models(&seed).await.expect("seed again"), 0);

    // Pages in id order.
    let all = ModelFilter::default();
    let first = store.models_page(None, 20, &all).await.expect("page");
    assert_eq!(first.len(), 20);
    let rest = store
        .models_page(Some(&first[19].id), 20, &all)
        .await
        .expect("page");
    assert_eq!(rest.len(), 10);
    assert_eq!(rest[0].id, "model-20");
    assert_eq!(rest[0].aliases, vec!["alias-20".to_owned()]);
    assert_eq!(rest[0].source, ModelSource::Builtin);
    // Filtered pages: only the provider's models, each with its own aliases.
    let anthropic = ModelFilter {
        provider: Some("anthropic".to_owned()),
        class: None,
    };
    let filtered = store
        .models_page(Some("model-02"), 3, &anthropic)
        .await
        .expect("page");
    let ids: Vec<&str> = filtered.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["model-03", "model-06", "model-09"]);
    assert_eq!(filtered[1].aliases, vec!["alias-06".to_owned()]);
    let no_class = ModelFilter {
        provider: None,
        class: Some("max".to_owned()),
    };
    assert!(store
        .models_page(None, 10, &no_class)
        .await
        .expect("page")
        .is_empty());
    let between = store
        .catalog_prices_between("model-05", "model-07")
        .await
        .expect("prices");
    assert_eq!(between.len(), 3);

    let now = T0.plus_micros(DAY);
    let changes = vec![
        ImportChange::NewModel {
            model: model("model-00", &[]),
            prices: vec![price(now, "3")],
        },
        ImportChange::NewModel {
            model: model("brand-new", &["alias-00", "brand-new-latest"]),
            prices: vec![price(now, "3")],
        },
        ImportChange::NewPrice {
            model_id: "model-01".to_owned(),
            price: price(now, "2"),
        },
        ImportChange::NewPrice {
            model_id: "model-01".to_owned(),
            price: price(now, "2.5"),
        },
        ImportChange::NewPrice {
            model_id: "missing".to_owned(),
            price: price(now, "2"),
        },
    ];
    let counts = store
        .import_models(&changes, now, &audit("prices.import"))
        .await
        .expect("import");
    assert_eq!(counts.models_added, 1);
    assert_eq!(counts.prices_added, 1);
    assert_eq!(counts.skipped, 3);
    // The taken alias was left out; the free one kept.
    let brand = store
        .find_model("brand-new-latest")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(brand.aliases, vec!["brand-new-latest".to_owned()]);
    assert_eq!(
        store
            .find_model("alias-00")
            .await
            .expect("find")
            .expect("found")
            .id,
        "model-00"
    );
    assert_eq!(audited(store, "prices.import").await, 1);
    // An import never writes the past.
    let past = vec![ImportChange::NewPrice {
        model_id: "model-02".to_owned(),
        price: price(T0, "7"),
    }];
    assert!(matches!(
        store
            .import_models(&past, now, &audit("prices.import"))
            .await,
        Err(PricingError::InThePast)
    ));
    assert_eq!(audited(store, "prices.import").await, 1);
}

on_both_backends!(
    names_are_unique,
    prices_in_force_never_change,
    seeding_is_idempotent_and_imports_skip_what_exists,
);
