/* See lease.h. Linear probing with backward-shift deletion (no tombstones),
 * grown at half full and shrunk at an eighth, so the map follows the book's
 * leases (each ends within a lease lifetime) and stays bounded whatever
 * keys clients send. */
#include "lease.h"

#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "../_siphash.h" /* the core's, as the core hashes keys */

#define MIN_SLOTS 64u

static uint64_t hash_of(const g_lease *m, const uint8_t *key, size_t n) {
    uint64_t h = g_siphash13(m->k0, m->k1, key, n);
    return h ? h : 1;
}

int lease_init(g_lease *m, uint64_t k0, uint64_t k1) {
    m->slots = calloc(MIN_SLOTS, sizeof *m->slots);
    if (!m->slots) return -1;
    m->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m->efd < 0 || pthread_mutex_init(&m->mu, NULL) != 0) {
        if (m->efd >= 0) close(m->efd);
        free(m->slots);
        m->slots = NULL;
        return -1;
    }
    m->nlow = 0;
    m->mask = MIN_SLOTS - 1;
    m->used = 0;
    m->k0 = k0;
    m->k1 = k1;
    m->low_cap = 0;
    m->failing = 0;
    m->broken = 0;
    return 0;
}

void lease_destroy(g_lease *m) {
    if (!m->slots) return;
    pthread_mutex_destroy(&m->mu);
    for (uint32_t i = 0; i < m->nlow; i++) free(m->low[i].key);
    close(m->efd);
    free(m->slots);
    m->slots = NULL;
}

static g_lease_entry *find(const g_lease *m, uint64_t h) {
    for (uint32_t k = (uint32_t)h & m->mask;; k = (k + 1) & m->mask) {
        g_lease_entry *e = &m->slots[k];
        if (e->h == h) return e;
        if (!e->h) return NULL;
    }
}

static void place(g_lease_entry *slots, uint32_t mask, g_lease_entry e) {
    uint32_t k = (uint32_t)e.h & mask;
    while (slots[k].h) k = (k + 1) & mask;
    slots[k] = e;
}

/* Rehashes into cap slots (a power of two above twice the entries). */
static int resize(g_lease *m, uint32_t cap) {
    g_lease_entry *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (uint32_t i = 0; i <= m->mask; i++)
        if (m->slots[i].h) place(slots, cap - 1, m->slots[i]);
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return 0;
}

int lease_set(g_lease *m, const uint8_t *key, size_t n, int64_t ahead, int64_t ahead_at, int64_t low) {
    uint64_t h = hash_of(m, key, n);
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    g_lease_entry *e = find(m, h);
    if (e) {
        e->ahead = ahead;
        e->ahead_at = ahead_at;
        e->low = low;
        e->told = 0;
    } else if ((uint64_t)(m->used + 1) * 2 > (uint64_t)m->mask + 1 &&
               (m->mask + 1 > UINT32_MAX / 2 || resize(m, (m->mask + 1) * 2) != 0)) {
        rc = -1;
    } else {
        g_lease_entry fresh = {h, ahead, ahead_at, low, 0};
        place(m->slots, m->mask, fresh);
        m->used++;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static void remove_at(g_lease *m, uint32_t i) {
    /* backward shift: move later entries of the run into the hole when
     * their home is not between the hole and them */
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->slots[j].h) break;
        uint32_t home = (uint32_t)m->slots[j].h & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].h = 0;
    m->used--;
}

void lease_drop(g_lease *m, const uint8_t *key, size_t n) {
    uint64_t h = hash_of(m, key, n);
    pthread_mutex_lock(&m->mu);
    g_lease_entry *e = find(m, h);
    if (e) {
        remove_at(m, (uint32_t)(e - m->slots));
        if (m->mask + 1 > MIN_SLOTS && (m->used + 1) * 8 < m->mask + 1) resize(m, (m->mask + 1) / 2);
    }
    pthread_mutex_unlock(&m->mu);
}

void lease_clear(g_lease *m) {
    pthread_mutex_lock(&m->mu);
    g_lease_entry *small = calloc(MIN_SLOTS, sizeof *small);
    if (small) {
        free(m->slots);
        m->slots = small;
        m->mask = MIN_SLOTS - 1;
    } else {
        for (uint32_t i = 0; i <= m->mask; i++) m->slots[i].h = 0;
    }
    m->used = 0;
    pthread_mutex_unlock(&m->mu);
}

int lease_get(g_lease *m, const uint8_t *key, size_t n, int64_t *ahead, int64_t *ahead_at) {
    uint64_t h = hash_of(m, key, n);
    pthread_mutex_lock(&m->mu);
    const g_lease_entry *e = find(m, h);
    if (e) {
        *ahead = e->ahead;
        *ahead_at = e->ahead_at;
    }
    pthread_mutex_unlock(&m->mu);
    return e != NULL;
}

int lease_hit(g_lease *m, const uint8_t *key, size_t n, int64_t left, int64_t *ahead, int64_t *ahead_at,
              int *tell) {
    uint64_t h = hash_of(m, key, n);
    pthread_mutex_lock(&m->mu);
    g_lease_entry *e = find(m, h);
    if (e) {
        *ahead = e->ahead;
        *ahead_at = e->ahead_at;
        *tell = left <= e->low && !e->told;
        e->told |= *tell;
    } else {
        *tell = left <= __atomic_load_n(&m->low_cap, __ATOMIC_ACQUIRE);
    }
    pthread_mutex_unlock(&m->mu);
    return e != NULL;
}

uint32_t lease_count(g_lease *m) {
    pthread_mutex_lock(&m->mu);
    uint32_t n = m->used;
    pthread_mutex_unlock(&m->mu);
    return n;
}

void lease_low_hit(g_lease *m, const uint8_t *key, size_t n, int64_t left) {
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy) return; /* dropped: the next hit at low water tells again */
    if (n) memcpy(copy, key, n);
    pthread_mutex_lock(&m->mu);
    uint32_t was = m->nlow;
    if (was < G_LOW_HITS) {
        m->low[was] = (g_low_hit){copy, (uint32_t)n, left};
        m->nlow = was + 1;
        copy = NULL;
    }
    pthread_mutex_unlock(&m->mu);
    free(copy);
    if (was == 0) {
        uint64_t one = 1;
        ssize_t w = write(m->efd, &one, sizeof one); /* at worst the counter is full: Python is awake anyway */
        (void)w;
    }
}

uint32_t lease_take_low(g_lease *m, g_low_hit *out, uint32_t max) {
    pthread_mutex_lock(&m->mu);
    uint32_t n = m->nlow < max ? m->nlow : max;
    memcpy(out, m->low, n * sizeof *out);
    memmove(m->low, m->low + n, (m->nlow - n) * sizeof *out);
    m->nlow -= n;
    pthread_mutex_unlock(&m->mu);
    return n;
}
