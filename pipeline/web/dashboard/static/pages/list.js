// A list page of the API: a filter bar bound to the URL, a table, keyset paging, auto-refresh.

import {get} from '../api.js';
import {h, table} from '../dom.js';
import {filterBar, filtersOf, Pager, region} from '../ui.js';

/** Page size asked of the API. */
export const PAGE_SIZE = 50;

/**
 * ``spec``: {title, endpoint, filters (filterBar specs), columns, empty, href(row)?, tools(ctx)?,
 * decorate(view, page)?}. Returns the page's mount function.
 */
export function listPage(spec) {
  return (ctx) => {
    const results = region('results');
    let pager;
    const load = async () => {
      const query = {...filtersOf(ctx.query, spec.filters.map((f) => f.name)), limit: PAGE_SIZE, cursor: pager.cursor};
      const page = await get(spec.endpoint, query);
      pager.seen(page);
      const items = page.items ?? [];
      results.show(
        table(spec.columns, items, {
          empty: spec.empty,
          onRowClick: spec.href ? (row) => ctx.navigate(spec.href(row)) : null,
        }),
        pager.controls(items.length));
    };
    pager = new Pager(() => ctx.refresh());
    const bar = filterBar(ctx, spec.filters, () => { pager.reset(); ctx.refresh(); });
    return {
      title: spec.title,
      view: h('div', {class: 'list-page'}, h('div', {class: 'toolbar'}, bar), results.element),
      refresh: load,
    };
  };
}
