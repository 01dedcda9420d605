// Roster demo page: who is online (Presence) and live cursors (Broadcast),
// using the official supabase-js client, unchanged, against roster.
import { createClient } from '@supabase/supabase-js'

const $ = (id) => document.getElementById(id)
const CURSOR_INTERVAL_MS = 50 // ~20 cursor messages a second at most

// ---- identity --------------------------------------------------------------

function randomId(len) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
  const bytes = new Uint8Array(len)
  crypto.getRandomValues(bytes)
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')
}

function storageGet(store, key) {
  try {
    return store.getItem(key)
  } catch {
    return null
  }
}

function storageSet(store, key, value) {
  try {
    store.setItem(key, value)
  } catch {}
}

// A stable id per tab: sessionStorage survives reloads but is not shared
// between tabs, so each tab is one presence key.
function tabId() {
  let id = storageGet(sessionStorage, 'roster-demo-tab')
  if (!id) {
    id = 'tab-' + randomId(10)
    storageSet(sessionStorage, 'roster-demo-tab', id)
  }
  return id
}

function initialName() {
  const saved = (storageGet(localStorage, 'roster-demo-name') || '').trim()
  if (saved) return saved
  const name = 'Guest-' + String(1000 + Math.floor(Math.random() * 9000))
  storageSet(localStorage, 'roster-demo-name', name)
  return name
}

function roomFromUrl() {
  const room = (new URLSearchParams(location.search).get('room') || '').trim()
  return room ? room.slice(0, 64) : 'lobby'
}

// The colour is derived from the presence key, so every client agrees on it.
function colorFor(key) {
  let h = 2166136261
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 16777619)
  }
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b) // spread similar keys apart
  h ^= h >>> 16
  return `hsl(${(h >>> 0) % 360}, 70%, 45%)`
}

const me = {
  key: tabId(),
  name: initialName(),
  room: roomFromUrl(),
}
me.color = colorFor(me.key)

function status() {
  return document.visibilityState === 'hidden' ? 'away' : 'active'
}

// ---- page ------------------------------------------------------------------

const roomName = $('room-name')
const roomInput = $('room-input')
const nameInput = $('name-input')
const list = $('online-list')
const count = $('online-count')
const conn = $('connection')
const cursors = $('cursors')

roomName.textContent = me.room
roomInput.value = me.room
nameInput.value = me.name
document.title = `${me.room} · Roster demo`

$('room-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const room = roomInput.value.trim() || 'lobby'
  const url = new URL(location.href)
  url.searchParams.set('room', room)
  location.assign(url)
})

function setConnection(state, text) {
  conn.dataset.state = state
  conn.textContent = text
}

// ---- realtime --------------------------------------------------------------

const config = window.ROSTER_CONFIG || {}
const supabase = createClient(location.origin, config.key || 'sb_publishable_dev', {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
})

const channel = supabase.channel(me.room, {
  config: { presence: { key: me.key }, broadcast: { self: false } },
})

let subscribed = false
const onlineAt = new Date().toISOString()

function track() {
  if (!subscribed) return
  channel
    .track({ name: me.name, color: me.color, status: status(), online_at: onlineAt })
    .catch(() => {})
}

channel
  .on('presence', { event: 'sync' }, render)
  .on('presence', { event: 'leave' }, ({ key }) => {
    // Only drop the cursor once the key has no presence left at all.
    if (!channel.presenceState()[key]) removeCursor(key)
  })
  .on('broadcast', { event: 'cursor' }, ({ payload }) => moveCursor(payload))
  .subscribe((s) => {
    subscribed = s === 'SUBSCRIBED'
    if (subscribed) {
      setConnection('live', 'live')
      track()
    } else if (s === 'CLOSED') {
      setConnection('down', 'disconnected')
    } else {
      setConnection('connecting', 'reconnecting…')
    }
  })

document.addEventListener('visibilitychange', track)

let nameTimer
nameInput.addEventListener('input', () => {
  clearTimeout(nameTimer)
  nameTimer = setTimeout(() => {
    const name = nameInput.value.trim().slice(0, 32)
    if (!name || name === me.name) return
    me.name = name
    storageSet(localStorage, 'roster-demo-name', name)
    track()
  }, 300)
})

// ---- who is online -----------------------------------------------------------

function render() {
  const state = channel.presenceState()
  const people = Object.entries(state)
    .filter(([, metas]) => metas.length > 0)
    .map(([key, metas]) => ({ key, ...metas[metas.length - 1] }))
    .sort((a, b) => {
      if (a.key === me.key) return -1
      if (b.key === me.key) return 1
      return String(a.online_at).localeCompare(String(b.online_at)) || a.key.localeCompare(b.key)
    })

  list.replaceChildren(...people.map(row))
  count.textContent = `${people.length} online`

  for (const el of [...cursors.children]) {
    if (!state[el.dataset.key]) el.remove()
  }
}

function row(p) {
  const li = document.createElement('li')
  li.className = 'member'
  li.setAttribute('data-testid', 'member')
  li.dataset.key = p.key
  li.dataset.status = p.status === 'away' ? 'away' : 'active'

  const dot = document.createElement('span')
  dot.className = 'dot'
  dot.style.background = p.color || colorFor(p.key)

  const name = document.createElement('span')
  name.className = 'name'
  name.setAttribute('data-testid', 'member-name')
  name.textContent = p.name || p.key

  li.append(dot, name)
  if (p.key === me.key) {
    const you = document.createElement('span')
    you.className = 'you'
    you.textContent = 'you'
    li.append(you)
  }

  const st = document.createElement('span')
  st.className = 'status'
  st.setAttribute('data-testid', 'member-status')
  st.textContent = li.dataset.status
  li.append(st)
  return li
}

// ---- live cursors ------------------------------------------------------------

let lastSent = 0
let pending = null
let timer = null

function sendCursor(payload) {
  if (!subscribed) return
  lastSent = Date.now()
  channel.send({ type: 'broadcast', event: 'cursor', payload }).catch(() => {})
}

function queueCursor(payload) {
  pending = payload
  if (timer) return
  const wait = Math.max(0, lastSent + CURSOR_INTERVAL_MS - Date.now())
  timer = setTimeout(() => {
    timer = null
    const p = pending
    pending = null
    if (p) sendCursor(p)
  }, wait)
}

// Positions travel as fractions of the viewport so different window sizes agree.
document.addEventListener('mousemove', (e) => {
  queueCursor({
    key: me.key,
    name: me.name,
    color: me.color,
    x: e.clientX / window.innerWidth,
    y: e.clientY / window.innerHeight,
  })
})

document.documentElement.addEventListener('mouseleave', () => {
  queueCursor({ key: me.key, hidden: true })
})

function moveCursor(p) {
  if (!p || typeof p.key !== 'string' || p.key === me.key) return
  if (p.hidden) return removeCursor(p.key)
  if (typeof p.x !== 'number' || typeof p.y !== 'number') return

  let el = cursorEl(p.key)
  if (!el) {
    el = document.createElement('div')
    el.className = 'cursor'
    el.setAttribute('data-testid', 'cursor')
    el.dataset.key = p.key
    el.innerHTML =
      '<svg width="16" height="20" viewBox="0 0 16 20" aria-hidden="true">' +
      '<path d="M1 1l13 10.5-6 .8 3.4 6.6-2.6 1.2-3.3-6.7L1 17.5z"/></svg>' +
      '<span class="cursor-name"></span>'
    cursors.append(el)
  }
  const color = p.color || colorFor(p.key)
  el.style.setProperty('--c', color)
  el.querySelector('.cursor-name').textContent = p.name || p.key
  const x = Math.min(Math.max(p.x, 0), 1) * window.innerWidth
  const y = Math.min(Math.max(p.y, 0), 1) * window.innerHeight
  el.style.transform = `translate(${x}px, ${y}px)`
}

function cursorEl(key) {
  for (const el of cursors.children) if (el.dataset.key === key) return el
  return null
}

function removeCursor(key) {
  const el = cursorEl(key)
  if (el) el.remove()
}
