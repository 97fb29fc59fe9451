-- kumo.time: the reference pages' examples (Time, TimeDelta, with_ymd_hms,
-- parse_*, start_timer), KumoMTA's documented behaviours of Time and
-- TimeDelta (arithmetic, fields, lenient format), and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'

-- kumo.time/with_ymd_hms.md
local t = kumo.time.with_ymd_hms(2000, 01, 02, 03, 04, 05)
utils.assert_eq(tostring(t), '2000-01-02 03:04:05 UTC')
utils.assert_eq(t.year, 2000)
utils.assert_eq(t.month, 1)
utils.assert_eq(t.day, 2)
utils.assert_eq(t.hour, 3)
utils.assert_eq(t.minute, 4)
utils.assert_eq(t.second, 5)
utils.assert_eq(t.unix_timestamp, 946782245)
utils.assert_eq(t.unix_timestamp_millis, 946782245000)
utils.assert_eq(t.rfc2822, 'Sun, 2 Jan 2000 03:04:05 +0000')
utils.assert_eq(t.rfc3339, '2000-01-02T03:04:05+00:00')

-- kumo.time/parse_rfc2822.md, parse_rfc3339.md: the examples, and round trips
utils.assert_eq(kumo.time.parse_rfc2822 'Sun, 2 Jan 2000 03:04:05 +0000', t)
utils.assert_eq(kumo.time.parse_rfc3339 '2000-01-02T03:04:05+00:00', t)
utils.assert_eq(kumo.time.parse_rfc2822(t.rfc2822), t)
utils.assert_eq(kumo.time.parse_rfc3339(t.rfc3339), t)
utils.assert_eq(kumo.time.from_unix_timestamp(t.unix_timestamp), t)
-- zones are converted to UTC; "UTC", obsolete names, comments and 2-digit years
utils.assert_eq(kumo.time.parse_rfc2822 'Sun, 2 Jan 2000 03:04:05 UTC', t)
utils.assert_eq(kumo.time.parse_rfc2822 'Sat, 1 Jan 2000 22:04:05 -0500', t)
utils.assert_eq(kumo.time.parse_rfc2822 '1 Jan 2000 22:04:05 EST', t)
utils.assert_eq(kumo.time.parse_rfc2822 'Sun, 02 Jan 00 03:04:05 GMT (comment)', t)
utils.assert_eq(kumo.time.parse_rfc2822 'Sun, 2 Jan 2000 03:04 +0000', t - kumo.time.parse_duration(5))
utils.assert_eq(kumo.time.parse_rfc3339 '2000-01-02T04:34:05+01:30', t)
utils.assert_eq(kumo.time.parse_rfc3339 '2000-01-02t03:04:05z', t)
utils.assert_eq(kumo.time.parse_rfc3339('2000-01-02T03:04:05.25Z').rfc3339, '2000-01-02T03:04:05.250+00:00')
utils.assert_eq(kumo.time.parse_rfc3339('2000-01-02T03:04:05.123456789Z').unix_timestamp_millis, 946782245123)

-- kumo.time/Time.md: now, elapsed, equality
local now = kumo.time.now()
assert(now ~= t)
assert(now > t)
kumo.time.sleep(0.1)
assert(now.elapsed.seconds >= 0.1, 'elapsed ' .. now.elapsed.seconds)
assert(math.abs(now.unix_timestamp - os.time()) < 5)

-- fractional timestamps and arithmetic (Time.md, TimeDelta.md)
local unix_epoch = kumo.time.from_unix_timestamp(0)
local half_second = kumo.time.from_unix_timestamp(0.5)
utils.assert_eq(tostring(unix_epoch), '1970-01-01 00:00:00 UTC')
utils.assert_eq(tostring(half_second), '1970-01-01 00:00:00.500 UTC')
local delta = half_second - unix_epoch
utils.assert_eq(delta.seconds, 0.5)
utils.assert_eq(delta.human, '500ms')
utils.assert_eq(tostring(half_second + delta), '1970-01-01 00:00:01 UTC')
utils.assert_eq(tostring(half_second - kumo.time.parse_duration(0.5)), '1970-01-01 00:00:00 UTC')
local d3 = delta + delta + delta
utils.assert_eq(d3.seconds, 1.5)
local one = d3 - delta
utils.assert_eq(one.seconds, 1.0)
utils.assert_eq(one.nanoseconds, 1000000000)
utils.assert_eq(one.microseconds, 1000000)
utils.assert_eq(one.milliseconds, 1000)
utils.assert_eq(one.human, '1s')
utils.assert_eq(kumo.time.from_unix_timestamp(-1).rfc3339, '1969-12-31T23:59:59+00:00')
utils.assert_eq(tostring(unix_epoch - half_second), '-500ms')

-- kumo.time/TimeDelta.md example
local delta1 = kumo.time.parse_duration(20)
local delta2 = kumo.time.parse_duration '10 seconds'
assert((delta2 - delta1).seconds == -10)
assert((delta1 - delta2).seconds == 10)

-- kumo.time/parse_duration.md
local five = kumo.time.parse_duration '5m'
utils.assert_eq(five.seconds, 300)
utils.assert_eq(kumo.time.parse_duration(2.5).seconds, 2.5)
utils.assert_eq(kumo.time.parse_duration(2), kumo.time.parse_duration '2s')
local d = kumo.time.parse_duration '5 mins'
utils.assert_eq(d.human, '5m')
utils.assert_eq(tostring(d), '5m')
utils.assert_eq(kumo.time.parse_duration('1h 2m 3s 4ms').human, '1h 2m 3s 4ms')
utils.assert_eq(kumo.time.parse_duration(-3).seconds, -3)

-- Time:format, chrono's specifiers; an invalid one is kept as text
utils.assert_eq(t:format '%H:%M:%S%', '03:04:05%')
utils.assert_eq(t:format '%Y-%m-%d %H:%M:%S', '2000-01-02 03:04:05')
utils.assert_eq(t:format '%a %A %b %B %e %j %u %w', 'Sun Sunday Jan January  2 002 7 0')
utils.assert_eq(t:format '%I:%M %p %P %y %C %D %F %T %R', '03:04 AM am 00 20 01/02/00 2000-01-02 03:04:05 03:04')
utils.assert_eq(t:format '%G-W%V %U %W', '1999-W52 01 00')
utils.assert_eq(t:format '%s %z %:z %Z %%', '946782245 +0000 +00:00 UTC %')
utils.assert_eq(t:format '%c', 'Sun Jan  2 03:04:05 2000')
utils.assert_eq(t:format '%+', '2000-01-02T03:04:05+00:00')
utils.assert_eq(t:format '%-d/%-m %_H|%0e', '2/1  3|02')
utils.assert_eq(kumo.time.parse_rfc3339('2000-01-02T03:04:05.25Z'):format '%S%.f %S%.3f %f %6f', '05.250 05.250 250000000 250000')
utils.assert_eq(t:format '%Q %E é', '%Q %E é')
utils.assert_eq(kumo.time.with_ymd_hms(2020, 2, 29, 23, 59, 59):format '%F %j', '2020-02-29 060')

-- kumo.time/start_timer.md
local timer = kumo.time.start_timer 'my-operation'
kumo.time.sleep(0.05)
local took = timer:done()
assert(took >= 0.05 and took < 5, 'timer ' .. took)
do
  local scoped <close> = kumo.time.start_timer 'mything'
end
-- kumo.sleep and kumo.time.sleep are both there
assert(kumo.sleep and kumo.time.sleep)

-- errors
utils.assert_error({ 'kumo.time.parse_rfc2822', 'not a valid RFC 2822' }, kumo.time.parse_rfc2822, '2000-01-02')
utils.assert_error({ 'kumo.time.parse_rfc2822' }, kumo.time.parse_rfc2822, 'Sun, 31 Feb 2000 03:04:05 +0000')
utils.assert_error({ 'kumo.time.parse_rfc2822' }, kumo.time.parse_rfc2822, 'Xyz, 2 Jan 2000 03:04:05 +0000')
utils.assert_error({ 'kumo.time.parse_rfc3339', 'not a valid RFC 3339' }, kumo.time.parse_rfc3339, '2000-01-02 03:04')
utils.assert_error({ 'kumo.time.parse_rfc3339' }, kumo.time.parse_rfc3339, '2000-13-02T03:04:05Z')
utils.assert_error({ 'kumo.time.parse_rfc3339' }, kumo.time.parse_rfc3339, '\xff\xfe')
utils.assert_error({ 'kumo.time.parse_rfc3339', 'argument #1', 'number' }, kumo.time.parse_rfc3339, 5)
utils.assert_error({ 'kumo.time.with_ymd_hms', 'invalid date' }, kumo.time.with_ymd_hms, 2000, 4, 31, 0, 0, 0)
utils.assert_error({ 'kumo.time.with_ymd_hms', 'argument #6' }, kumo.time.with_ymd_hms, 2000, 4, 3, 0, 0)
utils.assert_error({ 'kumo.time.from_unix_timestamp', 'integer or floating point' }, kumo.time.from_unix_timestamp, 'x')
utils.assert_error({ 'invalid timestamp' }, kumo.time.from_unix_timestamp, 1e300)
utils.assert_error({ 'invalid timestamp' }, kumo.time.from_unix_timestamp, 0 / 0)
utils.assert_error({ 'kumo.time.parse_duration', 'invalid duration' }, kumo.time.parse_duration, 'five minutes')
utils.assert_error({ 'kumo.time.parse_duration', 'invalid duration value' }, kumo.time.parse_duration, {})
utils.assert_error({ 'kumo.time.start_timer', 'LABEL' }, kumo.time.start_timer)
utils.assert_error({ 'cannot compute' }, function()
  return t + t
end)
utils.assert_error({ 'cannot compute' }, function()
  return t + 1
end)
utils.assert_error({ 'overflow' }, function()
  return kumo.time.from_unix_timestamp(8.2e12) + kumo.time.parse_duration(1e11)
end)
utils.assert_error({ 'Time:format', 'format string' }, t.format, t, nil)
