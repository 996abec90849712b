//! Reservations (two-phase): the worst-case cost of a model call held before the call is made,
//! then settled with the real usage, released, or left to expire.
//!
//! A reservation is priced and split exactly as a usage event would be (tokens from
//! `acquired`, then `alloc` of the model's class for the current cycle, then µCR from the
//! wallet at the model's price), but its linked chain is made of **pending** transfers with
//! the reservation's timeout: the ledger counts pending debits against the balances they would
//! draw on (rule 2), so what is held cannot be spent twice, and it voids them at the timeout.
//!
//! Budgets count what reservations hold: a hard budget refuses a reservation (or a charge)
//! when its period's spend plus what other reservations hold plus the new cost would pass the
//! limit. Held amounts are read under the org's lock from the reservations that are pending and
//! not expired at the transaction's instant, so an expired reservation stops counting at its
//! timeout without any job.
//!
//! Settling records the real call as a usage event: each held leg is posted for what the call
//! takes from it (at most what it holds; the ledger releases the rest) in the same order, and
//! a call that costs more than was held takes the rest from the balances like any event (or is
//! refused with nothing changed, the reservation still pending). Releasing voids every leg.
//! Each step is decided and written under the org's lock in one transaction, and replaying it
//! answers what it did.

use super::*;
use crate::cycles::derived_id;
use credex_ledger::{Action, Amount};
use credex_store::{NewReservation, ReservationRecord, ReservationResolution, ReservationState};

/// How long a reservation holds when the caller does not say, seconds.
pub const RESERVATION_TIMEOUT_DEFAULT: u32 = 300;
/// The longest a reservation may hold, seconds (a day).
pub const RESERVATION_TIMEOUT_MAX: u32 = 86_400;

/// A reservation as asked: the worst case of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    /// The org's own id for the reservation (held once; a replay answers it).
    pub id: Uuid,
    /// A model id or alias.
    pub model: String,
    /// The most tokens the call may use.
    pub tokens: TokenUsage,
    /// 1 to [`RESERVATION_TIMEOUT_MAX`] seconds.
    pub timeout_seconds: u32,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub task: Option<String>,
    pub conversation: Option<String>,
}

impl ReservationRequest {
    /// SHA-256 of the reservation: its call (at a fixed instant: a reservation is made now)
    /// and its timeout.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"reservation");
        hash.update(self.timeout_seconds.to_be_bytes());
        hash.update(self.as_event(Timestamp::EPOCH).fingerprint());
        hash.finalize().into()
    }

    /// The call it reserves for, as an event at `at` (how it is priced and split).
    fn as_event(&self, at: Timestamp) -> UsageEvent {
        UsageEvent {
            id: self.id,
            model: self.model.clone(),
            tokens: self.tokens,
            at,
            at_given: true,
            user: self.user,
            api_key: self.api_key,
            task: self.task.clone(),
            conversation: self.conversation.clone(),
            metadata: None,
        }
    }
}

/// A reservation and whether this answer repeats an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationAnswer {
    pub reservation: ReservationRecord,
    pub replayed: bool,
}

/// A settled reservation and the usage event it recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub reservation: ReservationRecord,
    pub usage: RecordedUsage,
}

/// The id of a reservation's transfer for one leg and step.
fn reservation_transfer(org: OrgId, reservation: Uuid, leg: &str, step: &str) -> TransferId {
    derived_id(&[
        "reservation",
        &org.to_string(),
        &reservation.to_string(),
        leg,
        step,
    ])
}

fn reservation_metadata(reservation: Uuid) -> Result<credex_ledger::Metadata, UsageError> {
    credex_ledger::Metadata::new(format!(r#"{{"reservation_id":"{reservation}"}}"#))
        .map_err(corrupt)
}

/// The legs a reservation holds, with their pending transfers' ids: (leg, amount held).
fn held_legs(record: &ReservationRecord) -> [(&'static str, u64); 3] {
    [
        ("acquired", record.from_acquired),
        ("alloc", record.from_alloc),
        ("wallet", record.from_wallet_micro_cr),
    ]
}

/// What an account has available in the view (0 for none).
fn available_in(view: &UsageView, account: Option<AccountId>) -> u64 {
    account
        .and_then(|id| view.balances.get(&id))
        .map_or(0, |balance| u64::try_from(balance.available()).unwrap_or(0))
}

/// Why a reservation cannot be settled or released any more.
fn closed(record: &ReservationRecord, now: Timestamp) -> Option<UsageError> {
    let state = match record.state {
        ReservationState::Pending if record.holds_at(now) => return None,
        ReservationState::Pending => "expired",
        ReservationState::Settled => "settled",
        ReservationState::Released => "released",
    };
    Some(UsageError::ReservationClosed {
        id: record.id,
        state,
    })
}

impl Usage {
    /// Holds the worst-case cost of a call (see the module).
    pub async fn reserve(
        &self,
        org: OrgId,
        request: ReservationRequest,
    ) -> Result<ReservationAnswer, UsageError> {
        self.reserve_as(org, None, request).await
    }

    /// [`Usage::reserve`] for a request made with API key `key` (when `Some`), refused if the
    /// key is revoked by the hold's transaction.
    pub async fn reserve_as(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        request: ReservationRequest,
    ) -> Result<ReservationAnswer, UsageError> {
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            match self.reserve_once(org, key, &request, tries > 1).await {
                Err(UsageError::Stale) if tries <= STALE_RETRIES => {}
                answer => break answer,
            }
        };
        self.count_reservation(&answer);
        answer
    }

    /// One try of [`Usage::reserve`], from the org's memo or (`fresh`) from fresh reads.
    async fn reserve_once(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        request: &ReservationRequest,
        fresh: bool,
    ) -> Result<ReservationAnswer, UsageError> {
        if request.timeout_seconds == 0 || request.timeout_seconds > RESERVATION_TIMEOUT_MAX {
            return Err(UsageError::Invalid {
                index: 0,
                what: format!("a timeout is 1 to {RESERVATION_TIMEOUT_MAX} seconds"),
            });
        }
        let now = self.store().clock().now();
        let fingerprint = request.fingerprint();
        let event = request.as_event(now);
        check_batch(std::slice::from_ref(&event))?;
        let memo = self.memos.of(self.store(), org, fresh).await?;
        let mut priced = self
            .price(&memo, org, vec![event])
            .await?
            .pop()
            .ok_or_else(|| corrupt("a reservation priced to nothing"))?;
        let budgets = self.budgets(&memo, org).await?;
        count_in(&budgets, std::slice::from_mut(&mut priced));
        let a = priced.accounts;
        let reads = reads_for(
            &memo,
            key,
            std::slice::from_ref(&priced),
            &budgets,
            Vec::new(),
            vec![request.id],
        );
        let timeout = request.timeout_seconds;
        self.run(org, &reads, |view| {
            if let Some(record) = view.reservations.get(&request.id) {
                if record.fingerprint != fingerprint {
                    return Err(UsageError::Conflict {
                        index: 0,
                        id: request.id,
                    });
                }
                let answer = ReservationAnswer {
                    reservation: record.clone(),
                    replayed: true,
                };
                return Ok((None, answer));
            }
            let p = &priced;
            // Hard budgets: what is spent, what others hold and this worst case.
            let mut holds = Vec::with_capacity(p.budgets.len());
            for (budget_index, start) in &p.budgets {
                let budget = budgets
                    .get(*budget_index)
                    .ok_or_else(|| corrupt("a reservation in a budget that is not there"))?;
                let key = (budget.id(), *start);
                let would = view
                    .spent
                    .get(&key)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(view.held.get(&key).copied().unwrap_or(0))
                    .saturating_add(p.cost_micro_cr);
                if budget.is_hard() && would > budget.limit_micro_cr() {
                    return Err(UsageError::BudgetExceeded {
                        index: 0,
                        id: request.id,
                        budget: budget.id(),
                        name: budget.name().to_owned(),
                        limit_micro_cr: budget.limit_micro_cr(),
                        would_spend_micro_cr: would,
                    });
                }
                holds.push((budget.id(), *start, p.cost_micro_cr));
            }
            let available = |account| available_in(view, account);
            let tokens = p.event.total_tokens();
            let from_acquired = tokens.min(available(a.acquired));
            let from_alloc = (tokens - from_acquired).min(available(a.alloc));
            let uncovered = tokens - from_acquired - from_alloc;
            let needed = wallet_share(p.cost_micro_cr, tokens, uncovered);
            let in_wallet = available(a.wallet);
            if in_wallet < needed {
                return Err(UsageError::InsufficientFunds {
                    index: 0,
                    id: request.id,
                    needed_micro_cr: needed,
                    available_micro_cr: in_wallet,
                });
            }
            let metadata = reservation_metadata(request.id)?;
            let chain = movements(p, from_acquired, from_alloc, needed)?
                .into_iter()
                .map(|(leg, movement)| {
                    let id = reservation_transfer(org, request.id, leg, "pending");
                    let action = Action::Reserve {
                        movement,
                        timeout_seconds: Some(timeout),
                    };
                    Transfer::new(id, action, metadata.clone(), false).map_err(corrupt)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let chain = linked(chain);
            let record = ReservationRecord {
                org,
                id: request.id,
                model: p.model.clone(),
                class: p.class.clone(),
                asset: p.asset.to_string(),
                input_tokens: p.event.tokens.input(),
                cached_input_tokens: p.event.tokens.cached_input(),
                cache_write_tokens: p.event.tokens.cache_write(),
                output_tokens: p.event.tokens.output(),
                cost_micro_cr: p.cost_micro_cr,
                from_acquired,
                from_alloc,
                from_wallet_micro_cr: needed,
                created_at: view.now,
                expires_at: view.now.plus_seconds(timeout),
                user: p.event.user,
                api_key: p.event.api_key,
                task: p.event.task.clone(),
                conversation: p.event.conversation.clone(),
                fingerprint,
                transfer_ids: chain.iter().map(Transfer::id).collect(),
                state: ReservationState::Pending,
                resolved_at: None,
                usage_event: None,
            };
            let write = UsageWrite {
                chains: vec![chain],
                reservations: vec![NewReservation {
                    record: record.clone(),
                    budgets: holds,
                }],
                ..UsageWrite::default()
            };
            let answer = ReservationAnswer {
                reservation: record,
                replayed: false,
            };
            Ok((Some(write), answer))
        })
        .await
    }

    /// Settles a reservation with the call it was made for (see the module).
    pub async fn settle(
        &self,
        org: OrgId,
        reservation: Uuid,
        event: UsageEvent,
    ) -> Result<Settlement, UsageError> {
        self.settle_as(org, None, reservation, event).await
    }

    /// [`Usage::settle`] for a request made with API key `key` (when `Some`), refused if the
    /// key is revoked by the settlement's transaction.
    pub async fn settle_as(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        reservation: Uuid,
        event: UsageEvent,
    ) -> Result<Settlement, UsageError> {
        let mut alerts = 0;
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            let fresh = tries > 1;
            match self
                .settle_once(org, key, reservation, event.clone(), fresh, &mut alerts)
                .await
            {
                Err(UsageError::Stale) if tries <= STALE_RETRIES => {}
                outcome => break outcome,
            }
        };
        let counted = outcome.as_ref().map(|s| std::slice::from_ref(&s.usage));
        self.count(counted, alerts);
        outcome
    }

    /// One try of [`Usage::settle`], from the org's memo or (`fresh`) from fresh reads.
    async fn settle_once(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        reservation: Uuid,
        event: UsageEvent,
        fresh: bool,
        alerts: &mut u64,
    ) -> Result<Settlement, UsageError> {
        check_batch(std::slice::from_ref(&event))?;
        let memo = self.memos.of(self.store(), org, fresh).await?;
        let mut priced = self
            .price(&memo, org, vec![event])
            .await?
            .pop()
            .ok_or_else(|| corrupt("a settlement priced to nothing"))?;
        let budgets = self.budgets(&memo, org).await?;
        count_in(&budgets, std::slice::from_mut(&mut priced));
        let a = priced.accounts;
        let reads = reads_for(
            &memo,
            key,
            std::slice::from_ref(&priced),
            &budgets,
            vec![priced.event.id],
            vec![reservation],
        );
        self.run(org, &reads, |view| {
            let p = &priced;
            let id = p.event.id;
            let held = view
                .reservations
                .get(&reservation)
                .ok_or(UsageError::NoReservation { id: reservation })?;
            if let Some(recorded) = view.recorded.get(&id) {
                let same = held.state == ReservationState::Settled
                    && held.usage_event == Some(id)
                    && recorded.fingerprint == p.fingerprint;
                if !same {
                    return Err(UsageError::Conflict { index: 0, id });
                }
                let answer = Settlement {
                    reservation: held.clone(),
                    usage: RecordedUsage {
                        record: recorded.clone(),
                        replayed: true,
                    },
                };
                return Ok((None, answer));
            }
            if let Some(error) = closed(held, view.now) {
                return Err(error);
            }
            if p.model != held.model || p.asset.to_string() != held.asset {
                return Err(UsageError::ReservationMismatch {
                    id: reservation,
                    what: format!(
                        "it holds {} in {}; the call is {} in {}",
                        held.model, held.asset, p.model, p.asset
                    ),
                });
            }
            let mut spent = view.spent.clone();
            let mut touched = Vec::new();
            let mut write = UsageWrite::default();
            count_budgets(
                org,
                view,
                p,
                0,
                &budgets,
                &mut spent,
                &mut touched,
                &mut write.alerts,
            )?;
            write.spend = touched
                .into_iter()
                .map(|key| (key.0, key.1, spent.get(&key).copied().unwrap_or(0)))
                .collect();
            // What the call takes from each held leg, then from the balances for the rest.
            let available = |account| available_in(view, account);
            let tokens = p.event.total_tokens();
            let post_acquired = tokens.min(held.from_acquired);
            let post_alloc = (tokens - post_acquired).min(held.from_alloc);
            let mut rest = tokens - post_acquired - post_alloc;
            let more_acquired = rest.min(available(a.acquired));
            rest -= more_acquired;
            let more_alloc = rest.min(available(a.alloc));
            rest -= more_alloc;
            let needed = wallet_share(p.cost_micro_cr, tokens, rest);
            let post_wallet = needed.min(held.from_wallet_micro_cr);
            let more_wallet = needed - post_wallet;
            let in_wallet = available(a.wallet);
            if in_wallet < more_wallet {
                return Err(UsageError::InsufficientFunds {
                    index: 0,
                    id,
                    needed_micro_cr: more_wallet,
                    available_micro_cr: in_wallet,
                });
            }
            let metadata = reservation_metadata(reservation)?;
            let mut chain = Vec::new();
            let posts = [post_acquired, post_alloc, post_wallet];
            for ((leg, holds), post) in held_legs(held).into_iter().zip(posts) {
                if holds == 0 {
                    continue;
                }
                let pending_id = reservation_transfer(org, reservation, leg, "pending");
                let (step, action) = if post == 0 {
                    ("void", Action::Void { pending_id })
                } else {
                    let amount = Amount::new(post).map_err(corrupt)?;
                    let amount = Some(amount);
                    ("post", Action::Post { pending_id, amount })
                };
                let transfer_id = reservation_transfer(org, reservation, leg, step);
                chain.push(
                    Transfer::new(transfer_id, action, metadata.clone(), false).map_err(corrupt)?,
                );
            }
            let usage = usage_metadata(id, 1)?;
            let org_text = org.to_string();
            for (leg, movement) in movements(p, more_acquired, more_alloc, more_wallet)? {
                let transfer_id = usage_transfer_id(&org_text, &p.event, leg);
                chain.push(Transfer::movement(transfer_id, movement).with_metadata(usage.clone()));
            }
            let chain = linked(chain);
            let took = [
                post_acquired + more_acquired,
                post_alloc + more_alloc,
                needed,
            ];
            let record = p.record(
                org,
                view.now,
                took,
                chain.iter().map(Transfer::id).collect(),
            );
            let mut settled = held.clone();
            settled.state = ReservationState::Settled;
            settled.resolved_at = Some(view.now);
            settled.usage_event = Some(id);
            write.chains.push(chain);
            write.records.push(record.clone());
            write.resolutions.push(ReservationResolution {
                id: reservation,
                state: ReservationState::Settled,
                usage_event: Some(id),
            });
            *alerts = u64::try_from(write.alerts.len()).unwrap_or(u64::MAX);
            let answer = Settlement {
                reservation: settled,
                usage: RecordedUsage {
                    record,
                    replayed: false,
                },
            };
            Ok((Some(write), answer))
        })
        .await
    }

    /// Releases a pending reservation: every held leg is voided (see the module).
    pub async fn release(
        &self,
        org: OrgId,
        reservation: Uuid,
    ) -> Result<ReservationAnswer, UsageError> {
        self.release_as(org, None, reservation).await
    }

    /// [`Usage::release`] for a request made with API key `key` (when `Some`), refused if the
    /// key is revoked by the release's transaction.
    pub async fn release_as(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        reservation: Uuid,
    ) -> Result<ReservationAnswer, UsageError> {
        let reads = UsageReads {
            reservations: vec![reservation],
            key,
            ..UsageReads::default()
        };
        self.run(org, &reads, |view| {
            let held = view
                .reservations
                .get(&reservation)
                .ok_or(UsageError::NoReservation { id: reservation })?;
            if held.state == ReservationState::Released {
                let answer = ReservationAnswer {
                    reservation: held.clone(),
                    replayed: true,
                };
                return Ok((None, answer));
            }
            if let Some(error) = closed(held, view.now) {
                return Err(error);
            }
            let metadata = reservation_metadata(reservation)?;
            let mut chain = Vec::new();
            for (leg, holds) in held_legs(held) {
                if holds == 0 {
                    continue;
                }
                let pending_id = reservation_transfer(org, reservation, leg, "pending");
                let id = reservation_transfer(org, reservation, leg, "void");
                chain.push(
                    Transfer::new(id, Action::Void { pending_id }, metadata.clone(), false)
                        .map_err(corrupt)?,
                );
            }
            let mut released = held.clone();
            released.state = ReservationState::Released;
            released.resolved_at = Some(view.now);
            let write = UsageWrite {
                chains: vec![linked(chain)],
                resolutions: vec![ReservationResolution {
                    id: reservation,
                    state: ReservationState::Released,
                    usage_event: None,
                }],
                ..UsageWrite::default()
            };
            let answer = ReservationAnswer {
                reservation: released,
                replayed: false,
            };
            Ok((Some(write), answer))
        })
        .await
    }

    /// Counts a reservation's refusal with the usage refusals (held calls are not charged).
    fn count_reservation(&self, outcome: &Result<ReservationAnswer, UsageError>) {
        if let Err(error) = outcome {
            self.count(Err(error), 0);
        }
    }
}
