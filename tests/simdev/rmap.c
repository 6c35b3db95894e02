/* A sorted array of disjoint [base, base + size) ranges. Lookups are binary
 * searches; inserts move the tail, which is cheap at the sizes tests reach.
 * Also used as a set of handles (size 1 per handle). Callers lock. */
#include <stdlib.h>
#include <string.h>

#include "simdev_internal.h"

size_t sd_rmap_lower(const struct sd_rmap *m, uintptr_t addr)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->v[mid].base + m->v[mid].size <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void *sd_rmap_find(const struct sd_rmap *m, uintptr_t addr)
{
    size_t i = sd_rmap_lower(m, addr);
    if (i < m->n && m->v[i].base <= addr)
        return m->v[i].obj;
    return NULL;
}

bool sd_rmap_insert(struct sd_rmap *m, uintptr_t base, size_t size, void *obj)
{
    if (size == 0)
        return false;
    size_t i = sd_rmap_lower(m, base);
    if (i < m->n && m->v[i].base < base + size)
        return false; /* overlaps */
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        struct sd_range *v = realloc(m->v, cap * sizeof *v);
        if (!v)
            return false;
        m->v = v;
        m->cap = cap;
    }
    memmove(&m->v[i + 1], &m->v[i], (m->n - i) * sizeof *m->v);
    m->v[i] = (struct sd_range){base, size, obj};
    m->n++;
    return true;
}

void *sd_rmap_remove(struct sd_rmap *m, uintptr_t base)
{
    size_t i = sd_rmap_lower(m, base);
    if (i >= m->n || m->v[i].base != base)
        return NULL;
    void *obj = m->v[i].obj;
    memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof *m->v);
    m->n--;
    return obj;
}
