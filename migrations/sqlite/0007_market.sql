-- The market: one market per token asset (model class × cycle), its listings, buy orders and
-- their fills, buybacks, and the org pairs an admin linked (they never trade with each other).
--
-- Every write of a market runs in one transaction that first locks the market's row, then its
-- listings, then goes through the ledger (pending transfers, assets, balance stripes): fills,
-- listing changes and buybacks commit atomically with the ledger chain that moves their value.
-- Money is integer µCR, token quantities whole tokens.

CREATE TABLE markets (
    asset               TEXT PRIMARY KEY REFERENCES assets (code),
    class               TEXT NOT NULL,
    cycle               TEXT NOT NULL,
    window_open         INTEGER NOT NULL,                  -- listing window opens (decay starts)
    cycle_end           INTEGER NOT NULL,                  -- the market closes
    settings            TEXT NOT NULL,                    -- JSON: curve, fee, buyback, list price
    settings_updated_at INTEGER NOT NULL,
    next_seq            INTEGER NOT NULL DEFAULT 1 CHECK (next_seq > 0),  -- arrival order
    created_at          INTEGER NOT NULL,
    CHECK (window_open < cycle_end)
) STRICT;

-- Every settings change with the instant it took effect (audit, and what applied when).
CREATE TABLE market_settings_history (
    id          BLOB PRIMARY KEY,
    asset       TEXT NOT NULL REFERENCES markets (asset),
    changed_at  INTEGER NOT NULL,
    window_open INTEGER NOT NULL,
    settings    TEXT NOT NULL,
    changed_by  BLOB                                      -- the admin; none for defaults
) STRICT;
CREATE INDEX market_settings_history_asset ON market_settings_history (asset, changed_at);

CREATE TABLE listings (
    id                  BLOB PRIMARY KEY,
    asset               TEXT NOT NULL REFERENCES markets (asset),
    seller_org          BLOB NOT NULL,
    seller_escrow       BLOB NOT NULL,                    -- the seller's accounts, fixed at listing
    seller_wallet       BLOB NOT NULL,
    ask_per_1m_micro_cr INTEGER NOT NULL CHECK (ask_per_1m_micro_cr > 0),
    seq                 INTEGER NOT NULL CHECK (seq > 0),
    min_fill            INTEGER NOT NULL CHECK (min_fill > 0),
    quantity_listed     INTEGER NOT NULL CHECK (quantity_listed > 0),
    quantity_open       INTEGER NOT NULL CHECK (quantity_open >= 0),
    quantity_filled     INTEGER NOT NULL CHECK (quantity_filled >= 0),
    state               TEXT NOT NULL
                        CHECK (state IN ('open', 'filled', 'cancelled', 'expired', 'sold')),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    auto_sell_at        INTEGER,                           -- sell the rest to the provider then
    CHECK (quantity_open <= quantity_listed),
    CHECK (quantity_open + quantity_filled <= quantity_listed),
    CHECK ((state = 'open' AND quantity_open > 0) OR (state <> 'open' AND quantity_open = 0)),
    UNIQUE (asset, seq)
) STRICT;
-- The book: open listings in (ask, arrival) order.
CREATE INDEX listings_book ON listings (asset, ask_per_1m_micro_cr, seq) WHERE state = 'open';
CREATE INDEX listings_seller ON listings (seller_org, asset, created_at);
CREATE INDEX listings_auto_sell ON listings (auto_sell_at) WHERE state = 'open' AND auto_sell_at IS NOT NULL;

-- A buy order (immediate-or-cancel); its id is the request's, so a replay finds it.
CREATE TABLE orders (
    id         BLOB PRIMARY KEY,
    buyer_org  BLOB NOT NULL,
    asset      TEXT NOT NULL REFERENCES markets (asset),
    request    TEXT NOT NULL,                             -- JSON: what was asked
    result     TEXT NOT NULL,                             -- JSON: what was filled, and why it stopped
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX orders_buyer ON orders (buyer_org, created_at);

-- Tokens bought from one listing (or from the provider: no listing, no seller) at one price.
CREATE TABLE fills (
    id                    BLOB PRIMARY KEY,
    order_id              BLOB NOT NULL REFERENCES orders (id),
    position              INTEGER NOT NULL CHECK (position >= 0),
    asset                 TEXT NOT NULL,
    listing_id            BLOB REFERENCES listings (id),
    buyer_org             BLOB NOT NULL,
    seller_org            BLOB,
    quantity              INTEGER NOT NULL CHECK (quantity > 0),
    price_per_1m_micro_cr INTEGER NOT NULL CHECK (price_per_1m_micro_cr >= 0),
    cost_micro_cr         INTEGER NOT NULL CHECK (cost_micro_cr >= 0),
    fee_micro_cr          INTEGER NOT NULL CHECK (fee_micro_cr >= 0),
    fee_payer             TEXT CHECK (fee_payer IN ('seller', 'buyer')),
    transfer_ids          TEXT NOT NULL,                  -- JSON array of the legs' ids
    at                    INTEGER NOT NULL,
    CHECK (fee_micro_cr <= cost_micro_cr),
    CHECK ((listing_id IS NULL) = (seller_org IS NULL)),
    UNIQUE (order_id, position)
) STRICT;
CREATE INDEX fills_asset ON fills (asset, at);
CREATE INDEX fills_listing ON fills (listing_id);

-- Tokens sold back to the provider (by the org, or by a listing's automatic sale).
CREATE TABLE buybacks (
    id                    BLOB PRIMARY KEY,
    org_id                BLOB NOT NULL,
    asset                 TEXT NOT NULL REFERENCES markets (asset),
    listing_id            BLOB REFERENCES listings (id),
    quantity              INTEGER NOT NULL CHECK (quantity > 0),
    price_per_1m_micro_cr INTEGER NOT NULL CHECK (price_per_1m_micro_cr >= 0),
    payout_micro_cr       INTEGER NOT NULL CHECK (payout_micro_cr > 0),
    transfer_ids          TEXT NOT NULL,
    at                    INTEGER NOT NULL
) STRICT;
CREATE INDEX buybacks_asset_org ON buybacks (asset, org_id);

-- Orgs an admin linked (one owner, say): they never trade with each other. One row per pair,
-- the smaller id first.
CREATE TABLE org_links (
    org_a      BLOB NOT NULL REFERENCES orgs (id),
    org_b      BLOB NOT NULL REFERENCES orgs (id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_a, org_b),
    CHECK (org_a < org_b)
) STRICT;
CREATE INDEX org_links_b ON org_links (org_b);
