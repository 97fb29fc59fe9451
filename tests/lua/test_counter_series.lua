-- kumo.counter_series: the reference pages' examples, caching and
-- re-definition, saturation, sum_over rounding, and the errors. Time-based
-- rotation is covered by the unit test of the ring (tests/unit/lib).
local kumo = require 'kumo'
local utils = require 'lib2_util'
local CS = kumo.counter_series

-- define.md / increment.md / sum.md
local series = CS.define { name = 'deliveries.ok', num_buckets = 5, bucket_size = '1m' }
series:increment(1)
series:increment(3)
utils.assert_eq(series:sum(), 4)
-- sum_over.md: a span shorter than a bucket still includes the current one
utils.assert_eq(series:sum_over '2m', 4)
utils.assert_eq(series:sum_over '1s', 4)
utils.assert_eq(series:sum_over(0), 4)
utils.assert_eq(series:sum_over '1h', 4)

-- cached by name: same shape -> same series (initial_value ignored)
local again = CS.define { name = 'deliveries.ok', num_buckets = 5, bucket_size = 60, initial_value = 100 }
utils.assert_eq(again:sum(), 4)
again:increment(1)
utils.assert_eq(series:sum(), 5)
-- another shape replaces it, seeded with initial_value
local reshaped = CS.define { name = 'deliveries.ok', num_buckets = 6, bucket_size = '1m', initial_value = 7 }
utils.assert_eq(reshaped:sum(), 7)
utils.assert_eq(series:sum(), 7) -- the name now means the new series
-- "500ms" rounds up to 1 second: the same shape as bucket_size = 1
local sub = CS.define { name = 'sub', num_buckets = 2, bucket_size = '500ms', initial_value = 3 }
utils.assert_eq(CS.define({ name = 'sub', num_buckets = 2, bucket_size = 1 }):sum(), 3)
sub:increment(0)

-- delta.md: saturating at zero
local inflight = CS.define { name = 'inflight', num_buckets = 5, bucket_size = '1m' }
inflight:delta(1)
inflight:delta(-1)
inflight:delta(-5)
utils.assert_eq(inflight:sum(), 0)
inflight:delta(math.maxinteger)
inflight:delta(math.maxinteger)
inflight:delta(math.maxinteger) -- past 2^64-1: saturates
utils.assert_eq(inflight:sum(), 2 ^ 64) -- reported as a float past 2^63-1
inflight:delta(math.mininteger)

-- observe.md: replaces the current bucket
local depth = CS.define { name = 'queue.depth', num_buckets = 6, bucket_size = '10s' }
depth:observe(10)
depth:observe(4)
utils.assert_eq(depth:sum(), 4)

-- errors
utils.assert_error({ 'kumo.counter_series.define', 'num_buckets' }, CS.define, { name = 'x', num_buckets = 0, bucket_size = 1 })
utils.assert_error({ 'kumo.counter_series.define', 'name' }, CS.define, { num_buckets = 1, bucket_size = 1 })
utils.assert_error({ 'kumo.counter_series.define', 'bucket_size', 'invalid duration' }, CS.define, { name = 'x', num_buckets = 1, bucket_size = 'soon' })
utils.assert_error({ 'kumo.counter_series.define', 'bucket_size' }, CS.define, { name = 'x', num_buckets = 1 })
utils.assert_error({ 'kumo.counter_series.define', 'initial_value', '>= 0' }, CS.define, { name = 'x', num_buckets = 1, bucket_size = 1, initial_value = -1 })
utils.assert_error({ 'kumo.counter_series.define', 'argument #1 must be a table' }, CS.define, 'x')
utils.assert_error({ 'series:increment', '>= 0' }, series.increment, series, -1)
utils.assert_error({ 'series:observe', 'integer' }, series.observe, series, 'x')
utils.assert_error({ 'series:delta', 'integer' }, series.delta, series, 1.5)
utils.assert_error({ 'series:sum_over', 'duration' }, series.sum_over, series, {})
utils.assert_error({ 'series:sum', 'method' }, series.sum, {})
