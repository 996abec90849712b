// The portal in a real browser: Debian's Chromium, headless, driven by playwright-core, against
// a running `credex serve --demo` (scripts/portal-e2e starts it and sets CREDEX_URL).
//
// The story of issue 7: a customer signs in and sees usage charts, lists tokens (an invalid
// listing first shows a clear error); a second customer previews the cost and buys part of
// them; the first sees the fill and the CR received; an admin changes a buyback rate and the
// customer's buyback quote changes; a wrong password shows a clear error. Screenshots of the
// main pages at desktop and phone widths go to CREDEX_SCREENSHOTS (when set).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.CREDEX_URL ?? 'http://127.0.0.1:8080';
const shots = process.env.CREDEX_SCREENSHOTS;
const password = process.env.CREDEX_DEMO_PASSWORD ?? 'demo-password-123';
const seller = process.env.CREDEX_DEMO_SELLER ?? 'owner@acme.example';
const buyer = process.env.CREDEX_DEMO_BUYER ?? 'owner@globex.example';
const admin = process.env.CREDEX_DEMO_ADMIN ?? 'admin@demo.credex.dev';
const adminPassword = process.env.CREDEX_DEMO_ADMIN_PASSWORD ?? 'demo-admin-password';

const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
  if (shots) mkdirSync(shots, { recursive: true });
});

after(async () => {
  await browser?.close();
});

async function signIn(email, secret, viewport = DESKTOP) {
  const context = await browser.newContext({ viewport, baseURL: base });
  const page = await context.newPage();
  await page.goto('/portal/sign-in');
  await page.getByLabel('E-mail address').fill(email);
  await page.getByLabel('Password').fill(secret);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForLoadState('domcontentloaded');
  return { context, page };
}

/** Screenshots of the page at desktop and phone widths. */
async function shoot(page, name) {
  if (!shots) return;
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: join(shots, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(shots, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize(DESKTOP);
}

/** Text of an element, whitespace collapsed. */
async function textOf(locator) {
  return (await locator.innerText()).replace(/\s+/g, ' ').trim();
}

/** CR amount in µCR from the portal's "1,234.56 CR". */
function microCr(text) {
  const match = text.replace(/,/g, '').match(/(−?)(\d+)(?:\.(\d+))? CR/);
  assert.ok(match, `no CR amount in ${JSON.stringify(text)}`);
  const frac = (match[3] ?? '').padEnd(6, '0');
  const value = BigInt(match[2]) * 1000000n + BigInt(frac);
  return match[1] ? -value : value;
}

test('a wrong password shows a clear error and signs no one in', async () => {
  const { context, page } = await signIn(seller, 'not-the-password');
  const error = page.locator('#sign-in-error');
  await error.waitFor();
  assert.match(await textOf(error), /e-mail address or the password is wrong/);
  assert.match(page.url(), /\/portal\/sign-in/);
  await shoot(page, 'sign-in-error');
  await context.close();
});

test('the market story: list, preview and buy, see the fill, buyback rate changes', async () => {
  // The seller signs in and sees usage charts.
  const a = await signIn(seller, password);
  await a.page.getByRole('heading', { name: 'Overview' }).waitFor();
  await shoot(a.page, 'overview');
  await a.page.getByRole('link', { name: 'Usage', exact: true }).click();
  await a.page.getByRole('heading', { name: 'Usage and cost' }).waitFor();
  const charts = a.page.locator('svg.chart');
  assert.ok((await charts.count()) >= 1, 'the usage page draws charts');
  const bars = a.page.locator('svg.chart rect');
  assert.ok((await bars.count()) > 0, 'the usage charts have bars');
  await shoot(a.page, 'usage');

  // The market: the seller opens the first market it holds tokens in.
  await a.page.getByRole('link', { name: 'Market', exact: true }).click();
  await a.page.getByRole('heading', { name: 'Market', exact: true }).waitFor();
  await shoot(a.page, 'market');
  const firstMarket = a.page.locator('table a[href*="/market/"]').first();
  const asset = (await firstMarket.innerText()).trim();
  await firstMarket.click();
  await a.page.getByRole('heading', { name: asset }).waitFor();
  await shoot(a.page, 'market-asset');
  const walletBefore = microCr(await textOf(a.page.locator('#wallet')));

  // An invalid listing shows its error next to the field and lists nothing.
  await a.page.getByLabel('Quantity (tokens)', { exact: false }).nth(1).fill('200000');
  await a.page.getByLabel('Ask per 1M tokens (CR)', { exact: false }).fill('cheap');
  await a.page.getByRole('button', { name: 'List tokens' }).click();
  const askError = a.page.locator('#f-ask-error');
  await askError.waitFor();
  assert.match(await textOf(askError), /ask: an amount of CR/);
  await shoot(a.page, 'listing-error');

  // A valid listing, cheaper than anything else listed, so the buyer's order takes it first.
  await a.page.getByLabel('Ask per 1M tokens (CR)', { exact: false }).fill('0.01');
  await a.page.getByRole('button', { name: 'List tokens' }).click();
  await a.page.getByText('Your tokens are listed.').waitFor();

  // The buyer previews the exact cost, then confirms.
  const b = await signIn(buyer, password);
  await b.page.getByRole('link', { name: 'Market', exact: true }).click();
  await b.page.getByRole('link', { name: asset, exact: true }).first().click();
  await b.page.getByRole('heading', { name: asset }).waitFor();
  await b.page.getByLabel('Quantity (tokens)', { exact: false }).first().fill('100000');
  await b.page.getByRole('button', { name: 'Preview cost' }).click();
  const preview = b.page.locator('#cost-preview');
  await preview.waitFor();
  const total = microCr(await textOf(b.page.locator('#preview-total')));
  assert.ok(total > 0n, 'the preview shows what the purchase costs');
  await shoot(b.page, 'buy-preview');
  await b.page.getByRole('button', { name: 'Confirm purchase' }).click();
  const result = b.page.locator('#order-result');
  await result.waitFor();
  assert.match(await textOf(result), /Bought 100,000 tokens/);
  const paid = microCr((await textOf(result)).split(' for ')[1]);
  assert.ok(paid <= total, `paid ${paid} µCR, more than the ${total} µCR previewed`);
  await shoot(b.page, 'buy-done');

  // The seller sees the fill and the CR received.
  await a.page.goto(a.page.url().split('?')[0]);
  const row = a.page.locator('tr[data-listing]', { hasText: '0.01 CR' }).first();
  await row.waitFor();
  assert.match(await textOf(row), /200,000 100,000 100,000/);
  const walletAfter = microCr(await textOf(a.page.locator('#wallet')));
  assert.ok(walletAfter > walletBefore, `the seller's CR rose (${walletBefore} → ${walletAfter})`);

  // The buyback price before the admin's change.
  const buybackBefore = await textOf(a.page.locator('#buyback-price'));

  // The admin halves the buyback rate of that market.
  const admin_ = await signIn(admin, adminPassword);
  await admin_.page.goto(`/portal/admin/markets/${encodeURIComponent(asset)}`);
  await admin_.page.getByRole('heading', { name: asset }).waitFor();
  await shoot(admin_.page, 'admin-market');
  await admin_.page.locator('[name="buyback_rate"]').fill('0.45');
  await admin_.page.getByRole('button', { name: 'Save market settings' }).click();
  await admin_.page.waitForLoadState('domcontentloaded');
  assert.equal(await admin_.page.locator('.banner.error').count(), 0, 'the admin saved the settings');
  await admin_.page.goto('/portal/admin');
  await shoot(admin_.page, 'admin-platform');

  // The customer's buyback quote changes.
  await a.page.reload();
  const buybackAfter = await textOf(a.page.locator('#buyback-price'));
  assert.notEqual(buybackAfter, buybackBefore);
  assert.ok(microCr(buybackAfter) < microCr(buybackBefore), `${buybackBefore} → ${buybackAfter}`);

  await a.context.close();
  await b.context.close();
  await admin_.context.close();
});

test('every page works at phone width', async () => {
  const { context, page } = await signIn(seller, password, PHONE);
  for (const name of ['Overview', 'Usage', 'Budgets', 'Market', 'API keys', 'Webhooks', 'Cost preview']) {
    await page.getByRole('link', { name, exact: true }).click();
    await page.waitForLoadState('domcontentloaded');
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width + 1, `${name} scrolls sideways at phone width (${width}px)`);
    assert.equal(await page.locator('.banner.error').count(), 0, `${name} shows an error`);
  }
  await context.close();
});
