// The demo page (/demo) in real headless Chromium against a fresh roster:
// presence list, away status, live cursors, leave. Screenshots go to
// <repo>/test-output/ (demo.png is the one used in the README).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))
const REPO_ROOT = path.resolve(here, '..', '..')
const ROSTER_BIN = process.env.ROSTER_BIN || path.join(REPO_ROOT, 'target', 'debug', 'roster')
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'
const OUT_DIR = path.join(REPO_ROOT, 'test-output')
const WAIT_MS = 10_000
const VIEWPORT = { width: 1040, height: 470 }

let server // { child, url }
let browser
const errors = [] // uncaught page errors and foreign requests, checked at the end

// ---- roster ------------------------------------------------------------------

function startRoster() {
  if (!existsSync(ROSTER_BIN)) {
    throw new Error(`roster binary not found at ${ROSTER_BIN} (cargo build -p roster-server, or set ROSTER_BIN)`)
  }
  const child = spawn(ROSTER_BIN, ['serve', '--dev', '--listen', '127.0.0.1:0'], {
    env: { ...process.env, ROSTER_LOG: process.env.ROSTER_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  process.on('exit', () => child.kill('SIGKILL'))
  let output = ''
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('roster did not start within 10 s')), WAIT_MS)
    function fail(err) {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`${err.message}\n--- roster output ---\n${output}`))
    }
    child.stderr.on('data', (d) => (output += d))
    child.stdout.on('data', (d) => {
      output += d
      const m = /roster listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
      if (m) {
        clearTimeout(timer)
        resolve({ child, url: m[1] })
      }
    })
    child.once('error', fail)
    child.once('exit', (code, signal) => fail(new Error(`roster exited early (${code ?? signal})`)))
  })
}

async function stopRoster() {
  if (!server) return
  const { child } = server
  server = undefined
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const t = setTimeout(() => child.kill('SIGKILL'), 3_000)
  await exited
  clearTimeout(t)
}

// ---- browser -----------------------------------------------------------------

/**
 * A person in their own browser context. `name` and `key` (the per-tab presence
 * key, which decides the colour) are preset so that screenshots are stable;
 * without them the page makes its own.
 */
async function openPerson(name, key, room = 'lobby') {
  const context = await browser.newContext({ viewport: VIEWPORT })
  await context.addInitScript(
    ([n, k]) => {
      if (n) localStorage.setItem('roster-demo-name', n)
      if (k) sessionStorage.setItem('roster-demo-tab', k)
    },
    [name, key],
  )
  const page = await context.newPage()
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`))
  // Everything comes from roster itself: no CDN, no other host.
  page.on('request', (r) => {
    if (!r.url().startsWith(server.url + '/')) errors.push(`${name}: request to ${r.url()}`)
  })
  page.on('websocket', (ws) => {
    if (!ws.url().startsWith(server.url.replace(/^http/, 'ws') + '/realtime/v1/websocket')) errors.push(`${name}: websocket to ${ws.url()}`)
  })
  await page.goto(`${server.url}/demo?room=${encodeURIComponent(room)}`)
  await page.waitForSelector('[data-testid=connection][data-state=live]', { timeout: WAIT_MS })
  const tab = await page.evaluate(() => sessionStorage.getItem('roster-demo-tab'))
  assert.ok(tab, 'the page has a presence key')
  return { name, key: tab, context, page }
}

/** Resolve once `page` lists exactly `names` (order ignored), each with its status. */
async function waitForMembers(page, expected) {
  try {
    await page.waitForFunction(
      (want) => {
        const rows = [...document.querySelectorAll('[data-testid=online-list] [data-testid=member]')]
        const got = rows.map((r) => `${r.dataset.key}=${r.dataset.status}`).sort()
        return JSON.stringify(got) === JSON.stringify(want)
      },
      Object.entries(expected).map(([k, s]) => `${k}=${s}`).sort(),
      { timeout: WAIT_MS },
    )
  } catch (e) {
    const rows = await page.$$eval('[data-testid=member]', (rs) => rs.map((r) => `${r.dataset.key}=${r.dataset.status} "${r.textContent}"`))
    throw new Error(`members never became ${JSON.stringify(expected)}; last seen ${JSON.stringify(rows)}`, { cause: e })
  }
}

function member(page, key) {
  return page.locator(`[data-testid=member][data-key="${key}"]`)
}

function cursor(page, key) {
  return page.locator(`[data-testid=cursor][data-key="${key}"]`)
}

/** Make the page believe its tab was hidden (or shown again) and tell it so. */
async function setHidden(page, hidden) {
  await page.evaluate((h) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') })
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h })
    document.dispatchEvent(new Event('visibilitychange'))
  }, hidden)
}

/** Wait until `key`'s cursor on `page` has settled at (x, y), within 3 px. */
async function waitForCursorAt(page, key, x, y) {
  await page.waitForFunction(
    ({ key, x, y }) => {
      const el = document.querySelector(`[data-testid=cursor][data-key="${key}"]`)
      if (!el) return false
      const r = el.getBoundingClientRect()
      return Math.abs(r.left - x) <= 3 && Math.abs(r.top - y) <= 3
    },
    { key, x, y },
    { timeout: WAIT_MS },
  )
}

function shot(name) {
  return path.join(OUT_DIR, name)
}

before(async () => {
  mkdirSync(OUT_DIR, { recursive: true })
  server = await startRoster()
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    timeout: 20_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  })
})

after(async () => {
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))])
  }
  await stopRoster()
})

test('serves the demo page and its assets', async () => {
  for (const [p, type] of [
    ['/demo', 'text/html'],
    ['/demo/app.js', 'text/javascript'],
    ['/demo/style.css', 'text/css'],
    ['/demo/config.js', 'text/javascript'],
  ]) {
    const res = await fetch(server.url + p)
    assert.equal(res.status, 200, p)
    assert.match(res.headers.get('content-type'), new RegExp(type), p)
  }
  const config = await (await fetch(server.url + '/demo/config.js')).text()
  assert.match(config, /sb_publishable_dev/)
  const root = await fetch(server.url + '/', { redirect: 'manual' })
  assert.ok(root.status >= 300 && root.status < 400, 'GET / redirects')
  assert.equal(root.headers.get('location'), '/demo')
})

test('a fresh tab gets a random name and key, kept across reloads', async () => {
  const guest = await openPerson(undefined, undefined, 'guests')
  const { page } = guest
  assert.match(guest.key, /^tab-[a-z0-9]{10}$/)
  const name = await page.inputValue('[data-testid=name-input]')
  assert.match(name, /^Guest-\d{4}$/)
  await waitForMembers(page, { [guest.key]: 'active' })
  assert.equal(await page.textContent('[data-testid=room-name]'), 'guests')

  await page.reload()
  await page.waitForSelector('[data-testid=connection][data-state=live]', { timeout: WAIT_MS })
  await waitForMembers(page, { [guest.key]: 'active' })
  assert.equal(await page.inputValue('[data-testid=name-input]'), name)

  // Renaming re-tracks: the row follows.
  await page.fill('[data-testid=name-input]', 'Renamed')
  await member(page, guest.key).locator('[data-testid=member-name]').filter({ hasText: 'Renamed' }).waitFor({ timeout: WAIT_MS })
  await guest.context.close()
})

test('presence, away status, live cursors and leave between real browsers', async () => {
  const ada = await openPerson('Ada', 'tab-ada5')
  const grace = await openPerson('Grace', 'tab-grace2')
  assert.notEqual(ada.key, grace.key, 'each tab has its own presence key')

  // Each lists both, with names and colours; the own row is marked "you".
  for (const p of [ada, grace]) {
    await waitForMembers(p.page, { [ada.key]: 'active', [grace.key]: 'active' })
  }
  assert.equal(await member(ada.page, grace.key).locator('[data-testid=member-name]').textContent(), 'Grace')
  assert.equal(await member(grace.page, ada.key).locator('[data-testid=member-name]').textContent(), 'Ada')
  assert.match(await member(ada.page, ada.key).textContent(), /you/)
  const dot = await member(ada.page, grace.key).locator('.dot').evaluate((el) => getComputedStyle(el).backgroundColor)
  assert.match(dot, /^rgb/, 'the dot is coloured')
  assert.equal(await ada.page.textContent('[data-testid=room-name]'), 'lobby')
  assert.equal(await ada.page.textContent('[data-testid=online-count]'), '2 online')
  await ada.page.screenshot({ path: shot('demo-both-online.png') })

  // Grace hides her tab: Ada sees her away; back again, active.
  await setHidden(grace.page, true)
  await waitForMembers(ada.page, { [ada.key]: 'active', [grace.key]: 'away' })
  assert.match(await member(ada.page, grace.key).textContent(), /away/)
  await setHidden(grace.page, false)
  await waitForMembers(ada.page, { [ada.key]: 'active', [grace.key]: 'active' })
  await setHidden(grace.page, true)
  await waitForMembers(ada.page, { [ada.key]: 'active', [grace.key]: 'away' })

  // Ada moves her mouse: Grace sees Ada's cursor, labelled, where Ada left it.
  await ada.page.mouse.move(200, 200)
  await ada.page.mouse.move(420, 330, { steps: 8 })
  await waitForCursorAt(grace.page, ada.key, 420, 330)
  assert.equal(await cursor(grace.page, ada.key).textContent(), 'Ada')
  assert.equal(await cursor(ada.page, ada.key).count(), 0, 'no cursor for yourself')

  // Linus joins and moves his mouse: Ada's view is the README screenshot
  // (Ada active, Grace away, Linus active with his cursor on screen).
  const linus = await openPerson('Linus', 'tab-linus3')
  await waitForMembers(ada.page, { [ada.key]: 'active', [grace.key]: 'away', [linus.key]: 'active' })
  await linus.page.mouse.move(700, 300)
  await linus.page.mouse.move(330, 138, { steps: 8 })
  await waitForCursorAt(ada.page, linus.key, 330, 138)
  await ada.page.mouse.move(VIEWPORT.width - 1, VIEWPORT.height - 1) // keep the real pointer out of the way
  await ada.page.screenshot({ path: shot('demo.png') })
  await grace.page.screenshot({ path: shot('demo-other-view.png') })

  // Grace closes her tab: she leaves everyone's list.
  await grace.context.close()
  await waitForMembers(ada.page, { [ada.key]: 'active', [linus.key]: 'active' })
  await waitForMembers(linus.page, { [ada.key]: 'active', [linus.key]: 'active' })

  // Linus closes his: his row and his cursor go away.
  await linus.context.close()
  await waitForMembers(ada.page, { [ada.key]: 'active' })
  await cursor(ada.page, linus.key).waitFor({ state: 'detached', timeout: WAIT_MS })
  assert.equal(await ada.page.textContent('[data-testid=online-count]'), '1 online')
  await ada.page.screenshot({ path: shot('demo-alone.png') })
  await ada.context.close()

  assert.deepEqual(errors, [], 'no uncaught errors on the pages')
})
