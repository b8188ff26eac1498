/** A 768 MiB long[] on the Java heap (tests/run.rs): written, read twice, its checksum printed. */
public class Big {
    public static void main(String[] a) {
        int n = 96 << 20; // 96 Mi longs = 768 MiB
        long[] b = new long[n];
        for (int i = 0; i < n; i++) b[i] = i * 0x9E3779B97F4A7C15L ^ (i >>> 7);
        long s = 0;
        for (int p = 0; p < 2; p++) for (int i = 0; i < n; i++) s = s * 31 + b[i];
        System.out.println("sum=" + Long.toHexString(s));
    }
}
