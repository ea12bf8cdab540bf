//! Skeleton formats: joint names in each dataset's order, limbs to draw, left/right flip pairs,
//! and conversions between formats where joints correspond.

/// A keypoint layout.
#[derive(Debug, PartialEq, Eq)]
pub struct Skeleton {
    /// The layout's name (`coco17`, `mpii16`, `lsp14`...).
    pub name: &'static str,
    /// Joint names in the dataset's order.
    pub joints: &'static [&'static str],
    /// Joint pairs joined by a line when drawing.
    pub limbs: &'static [(usize, usize)],
    /// Left/right joint pairs swapped by a horizontal flip.
    pub flip_pairs: &'static [(usize, usize)],
    /// The flip pairs grouped by limb (legs, arms; the face for COCO): the pairs an annotator
    /// who mistook a person's front for the back swaps together (LSPET's crowd-sourced labels
    /// do on a few per cent of people), the unit [`crate::autodiff::loss::match_limb_swaps`]
    /// swaps.
    pub limb_groups: &'static [&'static [(usize, usize)]],
}

/// LSP / LSP-extended (Johnson and Everingham): 14 joints, person-centric left/right.
pub const LSP14: Skeleton = Skeleton {
    name: "lsp14",
    joints: &[
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
        "neck",
        "head_top",
    ],
    limbs: &[
        (0, 1),
        (1, 2),
        (3, 4),
        (4, 5),
        (2, 3),
        (6, 7),
        (7, 8),
        (9, 10),
        (10, 11),
        (8, 12),
        (9, 12),
        (12, 13),
        (2, 8),
        (3, 9),
    ],
    flip_pairs: &[(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)],
    limb_groups: &[&[(0, 5), (1, 4), (2, 3)], &[(6, 11), (7, 10), (8, 9)]],
};

/// MPII Human Pose: 16 joints.
pub const MPII16: Skeleton = Skeleton {
    name: "mpii16",
    joints: &[
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ],
    limbs: &[
        (0, 1),
        (1, 2),
        (2, 6),
        (3, 6),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (10, 11),
        (11, 12),
        (12, 7),
        (13, 7),
        (13, 14),
        (14, 15),
    ],
    flip_pairs: &[(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)],
    limb_groups: &[&[(0, 5), (1, 4), (2, 3)], &[(10, 15), (11, 14), (12, 13)]],
};

/// COCO person keypoints: 17 joints.
pub const COCO17: Skeleton = Skeleton {
    name: "coco17",
    joints: &[
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ],
    limbs: &[
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ],
    flip_pairs: &[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)],
    limb_groups: &[&[(1, 2), (3, 4)], &[(5, 6), (7, 8), (9, 10)], &[(11, 12), (13, 14), (15, 16)]],
};

/// COCO's per-keypoint OKS constants (sigmas), in COCO17 order.
pub const COCO_SIGMAS: [f32; 17] = [
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089,
    0.089,
];

impl Skeleton {
    /// Number of joints.
    pub fn len(&self) -> usize {
        self.joints.len()
    }

    /// True when the layout has no joints.
    pub fn is_empty(&self) -> bool {
        self.joints.is_empty()
    }

    /// Index of a joint by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.joints.iter().position(|j| *j == name)
    }

    /// Whether joint `j` is on the person's left (drawn in a different colour).
    pub fn is_left(&self, j: usize) -> bool {
        self.joints.get(j).is_some_and(|n| n.starts_with("left_"))
    }

    /// For each joint, the joint it becomes under a horizontal flip (itself when unpaired).
    pub fn flip_permutation(&self) -> Vec<usize> {
        let mut p: Vec<usize> = (0..self.len()).collect();
        for &(a, b) in self.flip_pairs {
            p[a] = b;
            p[b] = a;
        }
        p
    }

    /// The standard skeleton with `k` joints (14, 16 or 17).
    pub fn for_joints(k: usize) -> Option<&'static Skeleton> {
        [&LSP14, &MPII16, &COCO17].into_iter().find(|s| s.len() == k)
    }

    /// By name: `lsp14`, `mpii16`, `coco17`.
    pub fn by_name(name: &str) -> Option<&'static Skeleton> {
        [&LSP14, &MPII16, &COCO17].into_iter().find(|s| s.name == name)
    }

    /// Maps joints of this skeleton onto `to`: `result[j]` is the index in `self` of `to`'s
    /// joint `j`, or None where there is no corresponding joint (matched by name).
    pub fn mapping_to(&self, to: &Skeleton) -> Vec<Option<usize>> {
        to.joints.iter().map(|name| self.index(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        for s in [&LSP14, &MPII16, &COCO17] {
            for &(a, b) in s.limbs.iter().chain(s.flip_pairs) {
                assert!(a < s.len() && b < s.len(), "{}", s.name);
            }
            for &(a, b) in s.flip_pairs {
                let (na, nb) = (s.joints[a], s.joints[b]);
                assert_eq!(na.replace("left_", "right_"), nb.replace("left_", "right_"), "{}", s.name);
                assert_ne!(na, nb);
            }
            // The limb groups partition the flip pairs.
            let mut grouped: Vec<(usize, usize)> = s.limb_groups.iter().flat_map(|g| g.iter().copied()).collect();
            grouped.sort();
            let mut pairs = s.flip_pairs.to_vec();
            pairs.sort();
            assert_eq!(grouped, pairs, "{}", s.name);
            let p = s.flip_permutation();
            assert!(p.iter().enumerate().all(|(i, &j)| p[j] == i));
            // Every left/right joint has a flip partner.
            for (i, n) in s.joints.iter().enumerate() {
                if n.starts_with("left_") || n.starts_with("right_") {
                    assert_ne!(p[i], i, "{} {n}", s.name);
                }
            }
        }
        assert_eq!(Skeleton::for_joints(14), Some(&LSP14));
        // LSP and MPII share the 12 limb joints and the head top.
        let m = LSP14.mapping_to(&MPII16);
        assert_eq!(m.iter().filter(|x| x.is_some()).count(), 13);
        assert_eq!(m[9], Some(13));
        assert_eq!(COCO17.mapping_to(&LSP14).iter().filter(|x| x.is_some()).count(), 12);
    }
}
